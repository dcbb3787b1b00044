"""The programs this API serves, with request and response models built from their artifacts.

Read once, when the app is created: the models become routes and OpenAPI
components, which FastAPI fixes at startup. So a new artifact *version* is
picked up by the workers alone (and shown by `GET /programs`, which reads
the files again), while a change of a program's fields, which comes with new
code anyway, needs the API restarted too.

A program served from MLflow has no artifact here: its models are built
from what the workers publish, when it is asked for (api/mlflow_programs.py).

A program whose artifact is missing or unreadable is still listed, with the
reason, and its submissions are refused with 503 and that reason; the
default program must be servable, or the API does not start (its `/jobs`
and `/batches` bodies are its input fields).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, create_model

from api.program_models import model_from_schema
from api.schemas import OVERRIDE_NAMES, BatchOptions, CustomId, JobOptions, ProgramInput
from core.jobs import Job
from core.programs import (
    ArtifactError,
    ProgramEntry,
    artifact_path,
    model_prefix,
    read_artifact_info,
    registered_programs,
)
from core.settings import Settings


@dataclass(frozen=True)
class ProgramModels:
    input: type[ProgramInput]
    output: type[BaseModel]
    job: type[Job]  # the job record, with `result` typed as the program's output
    job_create: type[JobOptions]  # {"input": {...}, "model"?, "temperature"?, "stream"?}
    batch_create: type[BatchOptions]  # {"items": [{"input": {...}, "custom_id"?}], ...}

    @property
    def input_fields(self) -> list[str]:
        return list(self.input.model_fields)


def program_models(name: str, schemas: dict[str, dict[str, Any]]) -> ProgramModels:
    """The request and response models of a program whose signature has these `{"input", "output"}` schemas."""
    camel = model_prefix(name)
    input_model = model_from_schema(f"{camel}Input", schemas["input"], prefix=camel, base=ProgramInput)
    # Every output field optional in the response: a record written by a
    # worker on another artifact version must still be answerable.
    output_schema = {**schemas["output"], "required": []}
    output_model = model_from_schema(f"{camel}Output", output_schema, prefix=camel, extra="allow")
    job = create_model(
        f"{camel}Job",
        __base__=Job,
        result=(output_model | None, Field(None, description=f"The {name} program's output fields.")),  # type: ignore[arg-type]
    )
    item = create_model(
        f"{camel}BatchItem",
        __base__=CustomId,
        input=(input_model, Field(description=f"The {name} program's input fields.")),
    )
    job_create = create_model(
        f"{camel}JobCreate",
        __base__=JobOptions,
        input=(input_model, Field(description=f"The {name} program's input fields.")),
    )
    batch_create = create_model(
        f"{camel}BatchCreate",
        __base__=BatchOptions,
        items=(list[item], Field(min_length=1, description="The items, each the input of one job.")),
    )
    return ProgramModels(input_model, output_model, job, job_create, batch_create)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    entry: ProgramEntry
    artifact: Path
    models: ProgramModels | None
    # Why the program cannot be served, when it cannot.
    problem: str | None

    @property
    def mlflow_uri(self) -> str | None:
        """Set for a program served from MLflow: its models come from the workers (api/mlflow_programs.py)."""
        return self.entry.mlflow_uri


@dataclass(frozen=True)
class DefaultBodies:
    """The flat bodies of `/jobs` and `/batches`: the default program's input fields at the top level."""

    job_create: type[BaseModel]
    batch_create: type[BaseModel]


class Catalog:
    def __init__(self, settings: Settings) -> None:
        self.default = settings.default_program
        self.programs: dict[str, CatalogEntry] = {}
        for name, entry in registered_programs(settings).items():
            path = artifact_path(settings, name, entry)
            try:
                if entry.mlflow_uri is not None:
                    models: ProgramModels | None = None
                    problem: str | None = (
                        f"served from MLflow ({entry.mlflow_uri}): its fields are known once a worker loaded it, "
                        f"at /programs/{name}"
                    )
                else:
                    models = program_models(name, read_artifact_info(name, path).signature_schemas(name))
                    problem = None
            except ArtifactError as e:
                models, problem = None, str(e)
            self.programs[name] = CatalogEntry(name, entry, path, models, problem)
        default = self.programs[self.default]
        if default.models is None:
            raise ArtifactError(f"the default program cannot be served: {default.problem}")
        self.default_bodies = _default_bodies(default.models)

    @property
    def default_models(self) -> ProgramModels:
        models = self.programs[self.default].models
        assert models is not None  # checked in __init__
        return models


def _default_bodies(models: ProgramModels) -> DefaultBodies:
    clash = OVERRIDE_NAMES & set(models.input_fields)
    if clash:
        raise ArtifactError(
            f"the default program has input field(s) {sorted(clash)}, which `/jobs` uses for job options; "
            "rename them, or make another program the default"
        )
    job_create = create_model(
        "JobCreate",
        __base__=(models.input, JobOptions),
        __doc__="The default program's input fields, with optional LM overrides for this job only.",
    )
    item = create_model("BatchItem", __base__=(models.input, CustomId))
    batch_create = create_model(
        "BatchCreate",
        __base__=BatchOptions,
        __doc__="Many inputs of the default program at once; `model` and `temperature` apply to every item.",
        items=(list[item], Field(min_length=1, description="The items, each the input of one job.")),
    )
    return DefaultBodies(job_create, batch_create)
