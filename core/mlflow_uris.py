"""MLflow model URIs a registry entry may name, parsed without importing mlflow.

Three forms, the ones MLflow documents for a logged model:

- `models:/<name>/<version>`: one registered version, fixed;
- `models:/<name>@<alias>`: whatever version the alias points to now, which
  moves (`@production` set to a new version): workers look it up again every
  `MLFLOW_REFRESH_S`;
- `runs:/<run_id>/<path>`: the model logged in a run under `<path>`, fixed.

Stages (`models:/<name>/Production`) are refused: MLflow deprecated them for
aliases. A malformed URI is a configuration error (the registry refuses it
at start-up, like a malformed import path); one that names nothing on the
tracking server is found out by the workers and makes only that program
unavailable.

What a job's record names as `program_version` comes from here too: the
URI of the exact version that ran (`models:/<name>/<version>`, or the
`runs:/` URI itself), so a record says which model served it whatever alias
it was reached through.
"""

import re
from dataclasses import dataclass
from enum import StrEnum

# MLflow's own rule for aliases (mlflow/utils/validation.py): letters, digits, '_' and '-'.
_ALIAS = re.compile(r"^[A-Za-z0-9_-]+$")
_VERSION = re.compile(r"^[1-9][0-9]*$")
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]+$")


class UriKind(StrEnum):
    version = "version"  # models:/<name>/<version>
    alias = "alias"  # models:/<name>@<alias>
    run = "run"  # runs:/<run_id>/<path>


@dataclass(frozen=True)
class MlflowUri:
    kind: UriKind
    uri: str
    # The registered model's name (kinds `version` and `alias`).
    model_name: str | None = None
    model_version: str | None = None
    alias: str | None = None
    # The run and the path the model was logged under in it (kind `run`).
    run_id: str | None = None
    path: str | None = None

    @property
    def moves(self) -> bool:
        """Whether the version it names can change while it stays the same URI."""
        return self.kind is UriKind.alias


def parse_mlflow_uri(uri: str) -> MlflowUri:
    """The URI's parts; ValueError, saying what is wrong, for anything else."""
    if uri.startswith("models:/"):
        return _models(uri, uri.removeprefix("models:/"))
    if uri.startswith("runs:/"):
        return _runs(uri, uri.removeprefix("runs:/"))
    raise ValueError(
        f"{uri!r} is not an MLflow model URI: use models:/<name>/<version>, models:/<name>@<alias> "
        "or runs:/<run_id>/<path>"
    )


def _models(uri: str, rest: str) -> MlflowUri:
    if "@" in rest:
        name, _, alias = rest.rpartition("@")
        _check_model_name(uri, name)
        if not _ALIAS.match(alias):
            raise ValueError(f"{uri!r}: the alias {alias!r} may hold only letters, digits, '_' and '-'")
        return MlflowUri(UriKind.alias, uri, model_name=name, alias=alias)
    name, _, version = rest.rpartition("/")
    _check_model_name(uri, name)
    if not _VERSION.match(version):
        raise ValueError(
            f"{uri!r}: {version!r} is not a version number; name a version (models:/{name}/3) or an "
            f"alias (models:/{name}@production); stages are deprecated in MLflow"
        )
    return MlflowUri(UriKind.version, uri, model_name=name, model_version=version)


def _check_model_name(uri: str, name: str) -> None:
    if not name or "/" in name or "@" in name:
        raise ValueError(f"{uri!r}: expected models:/<name>/<version> or models:/<name>@<alias>")


def _runs(uri: str, rest: str) -> MlflowUri:
    run_id, _, path = rest.partition("/")
    parts = path.split("/")
    if not _RUN_ID.match(run_id) or not path or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{uri!r}: expected runs:/<run_id>/<path>, the path the model was logged under")
    return MlflowUri(UriKind.run, uri, run_id=run_id, path=path)


# The alias an optimization of a program from MLflow moves to the candidate version it logs
# (worker/optimization.py); workers load the version it names, ready for a rollout.
CANDIDATE_ALIAS = "candidate"


def version_uri(model_name: str, version: str) -> str:
    """What a job served by a registered model's version records as its `program_version`."""
    return f"models:/{model_name}/{version}"


def version_number(program_version: str) -> int | None:
    """The registered version's number in a `program_version` (`models:/qa/3` -> 3); None for a run's model."""
    if not program_version.startswith("models:/"):
        return None
    last = program_version.rpartition("/")[2]
    return int(last) if _VERSION.match(last) else None
