"""A signature's input and output fields as pydantic models and JSON Schemas.

The models carry each field's type and description; their JSON Schemas go
into the artifact's metadata (`metadata.signature`), where the API reads
them without importing dspy. Workers validate a job's input with the same
input model before running it, so typed inputs reach the program typed.
"""

from typing import Any

import dspy
from pydantic import BaseModel, ConfigDict, Field, create_model

from core.programs import RESERVED_INPUT_NAMES, RegistryError, model_prefix


def _description(field: Any) -> str | None:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    desc = extra.get("desc")
    # DSPy fills in `${name}` when a field has no description: that says nothing.
    return None if not desc or str(desc).startswith("${") else str(desc)


def _model(title: str, fields: dict[str, Any], extra: str) -> type[BaseModel]:
    definitions: dict[str, Any] = {}
    for name, field in fields.items():
        default = ... if field.is_required() else field.default
        definitions[name] = (field.annotation, Field(default, description=_description(field)))
    model: type[BaseModel] = create_model(
        title,
        __config__=ConfigDict(extra=extra),  # type: ignore[typeddict-item]
        **definitions,
    )
    return model


def input_model(program_name: str, signature: type[dspy.Signature]) -> type[BaseModel]:
    reserved = RESERVED_INPUT_NAMES & set(signature.input_fields)
    if reserved:
        raise RegistryError(f"program {program_name!r}: input field(s) {sorted(reserved)} are reserved; rename them")
    return _model(f"{model_prefix(program_name)}Input", signature.input_fields, "forbid")


def output_model(program_name: str, signature: type[dspy.Signature]) -> type[BaseModel]:
    return _model(f"{model_prefix(program_name)}Output", signature.output_fields, "allow")


def signature_schemas(program_name: str, signature: type[dspy.Signature]) -> dict[str, dict[str, Any]]:
    """What the artifact's `metadata.signature` holds."""
    return {
        "input": input_model(program_name, signature).model_json_schema(),
        "output": output_model(program_name, signature).model_json_schema(),
    }


def interface_mismatch(artifact_schemas: dict[str, Any], code_schemas: dict[str, dict[str, Any]]) -> str | None:
    """How the fields an artifact was built for differ from the code's, or None.

    Names and required-ness only: the exact JSON Schema text differs between
    pydantic versions, and a type change shows up as a validation error anyway.
    """
    problems = []
    for side in ("input", "output"):
        built = artifact_schemas.get(side) or {}
        now = code_schemas[side]
        if set(built.get("properties", {})) != set(now.get("properties", {})) or set(built.get("required", [])) != set(
            now.get("required", [])
        ):
            problems.append(
                f"{side} fields {sorted(built.get('properties', {}))} in the artifact, "
                f"{sorted(now.get('properties', {}))} in the code"
            )
    return "; ".join(problems) or None
