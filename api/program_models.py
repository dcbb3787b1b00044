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

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

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
