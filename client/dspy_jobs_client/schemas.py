"""Python types from the JSON Schemas of a program's fields: the one reader, for the client and the server.

The schemas are pydantic's own (the server writes them from the program's
signature, program/schemas.py), so only what pydantic writes for signature
field types needs reading: scalars, `enum` (a `Literal`), `const`, arrays,
objects with properties (nested models, from `$defs`), free-form objects and
`anyOf` (unions, `Optional`). Anything else reads as `Any`: its value is
passed on as the JSON holds it.

Two readers use it: `RemoteProgram` (a remote result reads back typed) and
the API, which cannot import a program and builds its request and response
models from the schemas an artifact carries (api/program_models.py). Nested
models are named with a prefix (`TriageAddress`), so two programs' `Address`
types never clash in one OpenAPI document. Written here rather than taken
from a converter package: the ones on PyPI name enums and nested models
generically. Only pydantic is needed: it comes with dspy, and the rest of
the client does without.
"""

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

_SCALARS: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool, "null": type(None)}
Extra = Literal["forbid", "ignore", "allow"]


class SchemaTypes:
    """The types of one schema's properties; nested models are built once each, named `prefix` + title."""

    def __init__(self, root: dict[str, Any], prefix: str = "", nested_extra: Extra = "allow") -> None:
        self._prefix = prefix
        self._nested_extra: Extra = nested_extra
        self._defs: dict[str, Any] = root.get("$defs", {})
        self._models: dict[str, type[BaseModel]] = {}

    def of(self, schema: dict[str, Any]) -> Any:
        if "$ref" in schema:
            name = str(schema["$ref"]).rsplit("/", 1)[-1]
            if name not in self._models:
                self._models[name] = self.model(f"{self._prefix}{name}", self._defs.get(name, {}), self._nested_extra)
            return self._models[name]
        if "const" in schema:
            return Literal[schema["const"]]
        if "enum" in schema:
            return Literal[tuple(schema["enum"])]
        for union in ("anyOf", "oneOf"):
            if union in schema:
                return Union[tuple(self.of(option) for option in schema[union])]  # noqa: UP007
        kind = schema.get("type")
        if isinstance(kind, list):
            return Union[tuple(self.of({**schema, "type": k}) for k in kind)]  # noqa: UP007
        if kind == "array":
            return list[self.of(schema.get("items", {}))]  # type: ignore[misc]
        if kind == "object":
            if "properties" in schema:
                title = f"{self._prefix}{schema.get('title', 'Object')}"
                return self.model(title, schema, self._nested_extra)
            values = schema.get("additionalProperties")
            return dict[str, self.of(values) if isinstance(values, dict) else Any]  # type: ignore[misc]
        return _SCALARS.get(str(kind), Any)

    def model(
        self, name: str, schema: dict[str, Any], extra: Extra, base: type[BaseModel] | None = None
    ) -> type[BaseModel]:
        """A model of an object schema's properties, each with its default and description."""
        required = set(schema.get("required", []))
        fields: dict[str, Any] = {
            field: (
                self.of(prop),
                Field(... if field in required else prop.get("default"), description=prop.get("description")),
            )
            for field, prop in schema.get("properties", {}).items()
        }
        if base is not None:
            based: type[BaseModel] = create_model(name, __base__=base, **fields)
            return based
        model: type[BaseModel] = create_model(name, __config__=ConfigDict(extra=extra), **fields)
        return model


def model_from_schema(
    name: str, schema: dict[str, Any], *, prefix: str, extra: Extra = "forbid", base: type[BaseModel] | None = None
) -> type[BaseModel]:
    """A model named `name` for an object schema (on `base`, if given); nested models are named `prefix` + their
    title and ignore fields they do not know."""
    return SchemaTypes(schema, prefix, nested_extra="ignore").model(name, schema, extra, base)


def field_adapters(schema: dict[str, Any]) -> dict[str, TypeAdapter[Any]]:
    """A validator per property of an object schema, by name: it turns a field's JSON into its type."""
    types = SchemaTypes(schema)
    return {name: TypeAdapter(types.of(prop)) for name, prop in schema.get("properties", {}).items()}
