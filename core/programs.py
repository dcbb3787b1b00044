"""The program registry both sides share: which DSPy programs this service runs.

An entry names a program, the import path of its module (a `dspy.Module`
class, or a function that builds one), its artifact (the optimized state as
JSON, plus our metadata) and, for `python -m program.optimize`, its training
data and metric. Entries come from three places, later ones winning per name:
the built-in programs (`qa`, `triage`), the TOML file `PROGRAMS_FILE`
(`programs.toml` when present; relative paths in it are relative to it) and
the `PROGRAMS` setting (JSON; relative to the working directory). Serving
your own program therefore touches none of our code.

The API never imports a program: that would import dspy. Everything it knows
of one comes from the artifact's metadata, written by `program.optimize` from
the program's signature: its version, how and when it was built, and the JSON
Schemas of its input and output fields. Reading that is plain JSON, so the
API image stays without dspy, and the schemas it validates and documents are
the ones the workers were built against (a worker refuses an artifact whose
schemas no longer match the code; see worker/runtime.py).

An entry may instead name a DSPy model logged in MLflow (`mlflow_uri`,
core/mlflow_uris.py). There is no artifact for the API to read then: the
workers load the model (worker/mlflow_loader.py) and publish the schemas of
its signature in Redis, where the API reads them (api/mlflow_programs.py).
"""

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.mlflow_uris import parse_mlflow_uri

if TYPE_CHECKING:
    from core.settings import Settings

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
IMPORT_PATH_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# Batch items are stored as their input plus `custom_id` (api/batch_store.py),
# so no program may have an input of that name.
RESERVED_INPUT_NAMES = frozenset({"custom_id"})


class ProgramEntry(BaseModel):
    """One registered program."""

    model_config = ConfigDict(extra="forbid")

    module: str | None = Field(
        None,
        description="`package.module:attr`: a dspy.Module class, or a function returning a module. Required "
        "unless `mlflow_uri` is set; with it, the interface the logged program must have.",
    )
    mlflow_uri: str | None = Field(
        None,
        description="Serve the DSPy model logged in MLflow at this URI (`models:/<name>/<version>`, "
        "`models:/<name>@<alias>`, `runs:/<run_id>/<path>`), resolved against MLFLOW_TRACKING_URI, "
        "instead of a local artifact.",
    )
    artifact: str | None = Field(None, description="The artifact's path; default `<ARTIFACTS_DIR>/<name>.json`.")
    signature: str | None = Field(
        None,
        description="`package.module:Signature` whose fields are the program's interface. Needed only when the "
        "module has several predictors; otherwise the one predictor's signature is used.",
    )
    trainset: str | None = Field(None, description="JSON list of examples, for `program.optimize`.")
    devset: str | None = Field(None, description="JSON list of examples the artifact is scored on.")
    metric: str | None = Field(None, description="`package.module:function(example, prediction, trace)` -> score.")

    @field_validator("module", "signature", "metric")
    @classmethod
    def _import_path(cls, value: str | None) -> str | None:
        if value is not None and not IMPORT_PATH_PATTERN.match(value):
            raise ValueError(f"{value!r} is not an import path of the form package.module:attr")
        return value

    @field_validator("mlflow_uri")
    @classmethod
    def _mlflow_uri(cls, value: str | None) -> str | None:
        if value is not None:
            parse_mlflow_uri(value)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "ProgramEntry":
        if self.mlflow_uri is None:
            if self.module is None:
                raise ValueError("an entry needs `module` (with its artifact) or `mlflow_uri`")
            return self
        # What serves an MLflow program is the logged model; these keys are for local artifacts and
        # `program.optimize`, so accepting them would only mislead.
        local = [key for key in ("artifact", "trainset", "devset", "metric") if getattr(self, key) is not None]
        if local:
            raise ValueError(
                f"an entry served from MLflow (`mlflow_uri`) has no {', '.join(local)}: log new versions "
                "with mlflow.dspy.log_model instead"
            )
        return self


BUILTIN_PROGRAMS: dict[str, ProgramEntry] = {
    "qa": ProgramEntry(
        module="program.qa:QA",
        trainset="program/data/qa_train.json",
        devset="program/data/qa_dev.json",
        metric="program.qa:answer_metric",
    ),
    "triage": ProgramEntry(
        module="program.triage:Triage",
        trainset="program/data/triage_train.json",
        devset="program/data/triage_dev.json",
        metric="program.triage:triage_metric",
    ),
}


class RegistryError(ValueError):
    """The registry's configuration is wrong; the message says where."""


def model_prefix(name: str) -> str:
    """How a program's models are named (`triage` -> `TriageInput`, `TriageJob`, ...)."""
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_"))


def _from_file(path: Path) -> dict[str, Any]:
    """The file's tables; their relative paths are relative to the file, wherever the process runs."""
    try:
        tables = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise RegistryError(f"PROGRAMS_FILE {path}: {e}") from e
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise RegistryError(f"PROGRAMS_FILE {path}: {name!r} must be a table ([{name}])")
        for key in ("artifact", "trainset", "devset"):
            if isinstance(table.get(key), str):
                table[key] = str(path.parent / table[key])
    return tables


def registered_programs(settings: "Settings") -> dict[str, ProgramEntry]:
    """Every program this deployment serves, by name."""
    raw: dict[str, Any] = {}
    file = Path(settings.programs_file) if settings.programs_file else None
    if file is not None and file.exists():
        raw.update(_from_file(file))
    raw.update(settings.programs)
    programs = dict(BUILTIN_PROGRAMS)
    for name, value in raw.items():
        if not NAME_PATTERN.match(name):
            raise RegistryError(f"program name {name!r}: use lowercase letters, digits, '_' or '-' (it goes in URLs)")
        try:
            programs[name] = value if isinstance(value, ProgramEntry) else ProgramEntry.model_validate(value)
        except ValidationError as e:
            raise RegistryError(f"program {name!r}: {e}") from e
    prefixes: dict[str, str] = {}
    for name in programs:
        other = prefixes.setdefault(model_prefix(name), name)
        if other != name:
            raise RegistryError(f"programs {other!r} and {name!r} differ only in '-' and '_': rename one")
    if settings.default_program not in programs:
        raise RegistryError(
            f"DEFAULT_PROGRAM {settings.default_program!r} is not registered; known: {sorted(programs)}"
        )
    if programs[settings.default_program].mlflow_uri is not None:
        # `/jobs` takes the default program's fields at the top level of its body, a model the API
        # fixes at startup, before any worker has loaded a model from MLflow.
        raise RegistryError(
            f"DEFAULT_PROGRAM {settings.default_program!r} is served from MLflow; the default program must "
            "be served from an artifact (reach MLflow programs at /programs/<name>/jobs)"
        )
    return programs


def artifact_path(settings: "Settings", name: str, entry: ProgramEntry) -> Path:
    return Path(entry.artifact) if entry.artifact else Path(settings.artifacts_dir) / f"{name}.json"


class ArtifactError(RuntimeError):
    """The artifact is missing or unreadable; the message says what to run."""


class ArtifactInfo(BaseModel):
    """What an artifact says about itself, read without dspy."""

    path: str
    version: str = Field(description="`metadata.version`, or `sha256:<digest>` of the file when it has none.")
    metadata: dict[str, Any] = Field(description="Everything the artifact's metadata holds (builder, score, ...).")
    input_schema: dict[str, Any] | None = Field(description="JSON Schema of the input fields, from the signature.")
    output_schema: dict[str, Any] | None = Field(description="JSON Schema of the output fields, from the signature.")

    def signature_schemas(self, name: str) -> dict[str, dict[str, Any]]:
        """`{"input": ..., "output": ...}`; an artifact without them was not written by `program.optimize`."""
        if not self.input_schema or not self.output_schema:
            raise ArtifactError(
                f"program {name!r}: {self.path} carries no signature schemas (it was not written by "
                f"`python -m program.optimize`); rebuild it with `python -m program.optimize {name}`"
            )
        return {"input": self.input_schema, "output": self.output_schema}


def _version(metadata: dict[str, Any], raw: bytes) -> str:
    version = metadata.get("version")
    if version is not None:
        return str(version)
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:12]


def parse_artifact(name: str, path: Path, raw: bytes) -> tuple[dict[str, Any], ArtifactInfo]:
    """The artifact's whole saved state, and what it says about itself, from its bytes as read once."""
    try:
        state = json.loads(raw)
    except ValueError as e:
        raise ArtifactError(f"program {name!r}: {path} is not JSON ({e})") from e
    if not isinstance(state, dict):
        raise ArtifactError(f"program {name!r}: {path} holds a JSON {type(state).__name__}, not a saved program")
    found = state.get("metadata")
    metadata: dict[str, Any] = found if isinstance(found, dict) else {}
    signature = metadata.get("signature")
    if not isinstance(signature, dict):
        signature = {}
    info = ArtifactInfo(
        path=str(path),
        version=_version(metadata, raw),
        metadata={key: value for key, value in metadata.items() if key != "signature"},
        input_schema=signature.get("input"),
        output_schema=signature.get("output"),
    )
    return state, info


def read_artifact_info(name: str, path: Path) -> ArtifactInfo:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise ArtifactError(
            f"program {name!r} has no artifact at {path}; build it with `python -m program.optimize {name}`"
        ) from e
    except OSError as e:
        raise ArtifactError(f"program {name!r}: cannot read {path}: {e}") from e
    return parse_artifact(name, path, raw)[1]
