"""Programs from MLflow: where a model URI points now, and that version's DSPy program, loaded.

Not `mlflow.dspy.load_model`: it calls `dspy.configure` with the settings
saved by whoever logged the model (their LM, their adapter, sometimes their
API key), and a worker must never configure (only the first configuring
thread may; jobs get the worker's own LM through `dspy.context`). So the
model's files are downloaded (`mlflow.artifacts.download_artifacts`), the
MLmodel file says where the program is (`flavors.dspy.model_path`), and it
is loaded directly: a `.pkl` is MLflow's cloudpickled wrapper, whose
`.model` is the program; a directory is dspy's `save_program=True` form,
read with `dspy.load`. The saved dspy settings next to it are never read.

Both forms are pickles: loading one runs code from the registry. Workers do
it only with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true; otherwise the program
is unavailable with that reason. Whatever LM the program carries per
predictor is dropped, so the worker's LM serves it.

mlflow is imported here only, and only when a registry entry names an
MLflow URI: the API never imports this module, and a worker without MLflow
programs never imports mlflow.
"""

import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle
import dspy
import yaml

from core.mlflow_uris import MlflowUri, UriKind, version_uri
from core.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

_DEFAULT_MODEL_PATH = "data/model.pkl"  # mlflow/dspy/load.py's, for models logged before the flavor said


class MlflowLoadError(RuntimeError):
    """The model cannot be served here; the message says why (it is what `GET /programs` and the 503 say)."""


@dataclass(frozen=True)
class ResolvedModel:
    """One exact version of a logged model."""

    uri: MlflowUri
    # What the jobs it serves record as `program_version` (core/mlflow_uris.py).
    version: str
    # Where its files are, for `download_artifacts`.
    download_uri: str
    metadata: dict[str, Any] = field(default_factory=dict)


def configure_mlflow(settings: Settings, tracking_uri: str) -> None:
    """MLflow is configured through its environment variables, read where it needs them.

    The tracking URI too: a client is given it explicitly, but some of MLflow's own lookups (a `runs:/`
    URI's logged model goes through `models:/<model id>`) build their client from the process default,
    which would otherwise be a SQLite file in the working directory. Its HTTP defaults retry a failed
    request for about four minutes, which a worker would spend at start or in a refresh before saying
    the server is unreachable; ours bound it by MLFLOW_TIMEOUT_S.
    """
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(settings.mlflow_timeout_s)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(settings.mlflow_max_retries)
    # A progress bar per download in the worker's log, and usage reports to the internet: neither wanted.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _short(e: BaseException) -> str:
    """The part of a requests/urllib3 error chain that says what happened."""
    text = str(e)
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if errno:
        return errno.group(0)
    if "timed out" in text.lower():
        return "timed out"
    first = text.splitlines()[0] if text else type(e).__name__
    return first if len(first) <= 300 else first[:300] + "..."


class MlflowLoader:
    """One per worker process; its MLflow client is made on first use."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._tracking_uri = settings.mlflow_tracking_uri
        self._client: MlflowClient | None = None

    def _mlflow(self) -> "MlflowClient":
        if self._tracking_uri is None:
            raise MlflowLoadError("MLFLOW_TRACKING_URI is not set, so no MLflow model can be resolved")
        if self._client is None:
            configure_mlflow(self._settings, self._tracking_uri)
            try:
                from mlflow import MlflowClient
            except ImportError as e:
                raise MlflowLoadError(
                    f"mlflow is not installed in this worker ({e}); install the worker's `mlflow` extra"
                ) from e
            self._client = MlflowClient(tracking_uri=self._tracking_uri, registry_uri=self._tracking_uri)
        return self._client

    def _failure(self, uri: MlflowUri, step: str, e: Exception) -> MlflowLoadError:
        from mlflow.exceptions import MlflowException, RestException

        if isinstance(e, RestException):
            # The server answered: the model, version, alias or run is not there (or we may not see it).
            return MlflowLoadError(f"{uri.uri}: {step}: {e.message} (tracking server {self._tracking_uri})")
        # requests' errors are OSErrors; MLflow wraps those of its own REST calls in "API request to ...".
        if isinstance(e, OSError) or (isinstance(e, MlflowException) and e.message.startswith("API request to")):
            return MlflowLoadError(f"cannot reach the MLflow tracking server at {self._tracking_uri}: {_short(e)}")
        return MlflowLoadError(f"{uri.uri}: {step}: {type(e).__name__}: {_short(e)}")

    def resolve(self, uri: MlflowUri) -> ResolvedModel:
        """The version the URI names now: one request for a registered model (two at its first load), none
        for a run's model."""
        client = self._mlflow()
        if uri.kind is UriKind.run:
            return ResolvedModel(uri, uri.uri, uri.uri, {"run_id": uri.run_id, "path": uri.path})
        assert uri.model_name is not None
        try:
            if uri.kind is UriKind.alias:
                assert uri.alias is not None
                found = client.get_model_version_by_alias(uri.model_name, uri.alias)
            else:
                assert uri.model_version is not None
                found = client.get_model_version(uri.model_name, uri.model_version)
        except Exception as e:
            raise self._failure(uri, "looking it up", e) from e
        metadata = {
            "registered_model": uri.model_name,
            "model_version": str(found.version),
            "alias": uri.alias,
            "run_id": found.run_id,
            "source": found.source,
            "created_at_ms": found.creation_timestamp,
            "description": found.description or None,
        }
        return ResolvedModel(uri, version_uri(uri.model_name, str(found.version)), "", metadata)

    def load(self, resolved: ResolvedModel) -> dspy.Module:
        """Download the version's files and unpickle its program (trusting the registry, when allowed)."""
        client = self._mlflow()
        download_uri = resolved.download_uri
        uri = resolved.uri
        import mlflow.artifacts

        with tempfile.TemporaryDirectory(prefix="dspy-jobs-mlflow-") as tmp:
            try:
                if not download_uri:
                    assert uri.model_name is not None
                    download_uri = client.get_model_version_download_uri(
                        uri.model_name, resolved.metadata["model_version"]
                    )
                local = Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=download_uri, dst_path=tmp, tracking_uri=self._tracking_uri
                    )
                )
            except Exception as e:
                raise self._failure(uri, "downloading it", e) from e
            model_path = self._dspy_model_path(resolved, local)
            return self._unpickle(resolved, local, model_path)

    def _dspy_model_path(self, resolved: ResolvedModel, local: Path) -> Path:
        try:
            mlmodel = yaml.safe_load((local / "MLmodel").read_text())
        except (OSError, yaml.YAMLError) as e:
            raise MlflowLoadError(f"{resolved.version} is not an MLflow model (no readable MLmodel file: {e})") from e
        flavors = mlmodel.get("flavors") if isinstance(mlmodel, dict) else None
        flavor = flavors.get("dspy") if isinstance(flavors, dict) else None
        if not isinstance(flavor, dict):
            found = ", ".join(sorted(flavors)) if isinstance(flavors, dict) else "none"
            raise MlflowLoadError(
                f"{resolved.version} is not a DSPy model (its flavors: {found}); log it with mlflow.dspy.log_model"
            )
        path = (local / str(flavor.get("model_path") or _DEFAULT_MODEL_PATH)).resolve()
        if not path.is_relative_to(local.resolve()) or not path.exists():
            raise MlflowLoadError(f"{resolved.version}: its MLmodel names {path.name}, which it does not hold")
        return path

    def _unpickle(self, resolved: ResolvedModel, local: Path, path: Path) -> dspy.Module:
        if not self._settings.mlflow_allow_pickle_deserialization:
            raise MlflowLoadError(
                f"{resolved.version} is a pickled DSPy program, and loading it runs code from the registry: "
                "the workers load it only with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true (set it if you trust "
                f"every model on {self._tracking_uri})"
            )
        try:
            if path.is_dir():
                program: Any = dspy.load(str(path), allow_pickle=True)
            else:
                with path.open("rb") as f:
                    program = getattr(cloudpickle.load(f), "model", None)
        except Exception as e:
            hint = " (the program's code must be importable by the workers)" if isinstance(e, ImportError) else ""
            raise MlflowLoadError(f"{resolved.version}: cannot unpickle its DSPy program: {e}{hint}") from e
        if not isinstance(program, dspy.Module):
            raise MlflowLoadError(
                f"{resolved.version}: its dspy flavor holds a {type(program).__name__}, not a dspy.Module"
            )
        # The LM it was logged with (per predictor) would override the worker's from dspy.context.
        program.set_lm(None)
        log.info("unpickled %s from %s", resolved.version, local)
        return program
