"""Pydantic models rebuilt from the JSON Schemas in a program's artifact.

The API cannot import a program (it would import dspy), so it builds its
request and response models from the schemas the artifact carries
(core/programs.py). FastAPI then validates with them and documents them in
`/openapi.json` like any hand-written model.

The schemas come from pydantic itself (program/schemas.py), so only what
pydantic writes for signature field types needs reading back: scalars,
`enum` (a `Literal`), arrays, objects with properties (nested models, from
`$defs`), free-form objects, `anyOf` (unions, `Optional`), `const`.
Anything else is accepted as it is (`Any`); the worker validates the input
against the signature itself before running. Nested models are named after
the program (`TriageAddress`), so two programs' `Address` types never clash
in the OpenAPI document. Written here rather than taken from a converter
package: the ones on PyPI name enums and nested models generically, which
collides across programs in one OpenAPI document.
"""

from dataclasses import dataclass
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from api.schemas import BatchOptions, CustomId, JobOptions, ProgramInput
from core.jobs import Job
from core.programs import model_prefix

_SCALARS: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool, "null": type(None)}


class _Builder:
    def __init__(self, prefix: str, root: dict[str, Any]) -> None:
        self._prefix = prefix
        self._defs: dict[str, Any] = root.get("$defs", {})
        self._built: dict[str, type[BaseModel]] = {}

    def type_of(self, schema: dict[str, Any]) -> Any:
        if "$ref" in schema:
            name = str(schema["$ref"]).rsplit("/", 1)[-1]
            if name not in self._built:
                self._built[name] = self.model(f"{self._prefix}{name}", self._defs.get(name, {}), extra="ignore")
            return self._built[name]
        if "const" in schema:
            return Literal[schema["const"]]
        if "enum" in schema:
            return Literal[tuple(schema["enum"])]
        for union in ("anyOf", "oneOf"):
            if union in schema:
                return Union[tuple(self.type_of(option) for option in schema[union])]  # noqa: UP007
        kind = schema.get("type")
        if isinstance(kind, list):
            return Union[tuple(self.type_of({**schema, "type": k}) for k in kind)]  # noqa: UP007
        if kind == "array":
            return list[self.type_of(schema.get("items", {}))]  # type: ignore[misc]
        if kind == "object":
            if "properties" in schema:
                return self.model(f"{self._prefix}{schema.get('title', 'Object')}", schema, extra="ignore")
            values = schema.get("additionalProperties")
            return dict[str, self.type_of(values) if isinstance(values, dict) else Any]  # type: ignore[misc]
        return _SCALARS.get(str(kind), Any)

    def model(
        self,
        name: str,
        schema: dict[str, Any],
        extra: Literal["forbid", "ignore", "allow"],
        base: type[BaseModel] | None = None,
    ) -> type[BaseModel]:
        required = set(schema.get("required", []))
        fields: dict[str, Any] = {}
        for field, prop in schema.get("properties", {}).items():
            default = ... if field in required else prop.get("default")
            fields[field] = (self.type_of(prop), Field(default, description=prop.get("description")))
        if base is not None:
            return create_model(name, __base__=base, **fields)
        return create_model(name, __config__=ConfigDict(extra=extra), **fields)


def model_from_schema(
    name: str,
    schema: dict[str, Any],
    *,
    prefix: str,
    extra: Literal["forbid", "ignore", "allow"] = "forbid",
    base: type[BaseModel] | None = None,
) -> type[BaseModel]:
    """A model named `name` for an object schema; nested models are named `prefix` + their title."""
    return _Builder(prefix, schema).model(name, schema, extra, base)


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
