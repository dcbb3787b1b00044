"""A program's request and response models, rebuilt from the JSON Schemas in its artifact.

The API cannot import a program (it would import dspy), so it builds its
models from the schemas the artifact carries (core/programs.py), or that the
workers publish for a program from MLflow (api/mlflow_programs.py), with the
same schema reader the Python client uses (`dspy_jobs_client.schemas`).
FastAPI then validates with them and documents them in `/openapi.json` like
any hand-written model. The worker validates the input against the
signature itself before running.
"""

from dataclasses import dataclass
from typing import Any

from dspy_jobs_client.schemas import model_from_schema
from pydantic import BaseModel, Field, create_model

from api.schemas import BatchOptions, CustomId, JobOptions, ProgramInput
from core.jobs import Job
from core.programs import model_prefix


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
