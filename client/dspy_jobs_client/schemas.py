"""Python types from the JSON Schemas `GET /programs` gives, so a remote result reads back typed.

The schemas are pydantic's own (the server builds them from the program's
signature), so only what pydantic writes for signature field types needs
reading: scalars, `enum` (a `Literal`), `const`, arrays, objects with
properties (nested models, from `$defs`), free-form objects and `anyOf`
(unions, `Optional`). Anything else reads as `Any`: its value is passed
on as the JSON holds it. Imported by `RemoteProgram` only: pydantic comes
with dspy, and the rest of the client does without.
"""

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

_SCALARS: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool, "null": type(None)}


class _Types:
    def __init__(self, root: dict[str, Any]) -> None:
        self._defs: dict[str, Any] = root.get("$defs", {})
        self._models: dict[str, type[BaseModel]] = {}

    def of(self, schema: dict[str, Any]) -> Any:
        if "$ref" in schema:
            name = str(schema["$ref"]).rsplit("/", 1)[-1]
            if name not in self._models:
                self._models[name] = self.model(name, self._defs.get(name, {}))
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
                return self.model(str(schema.get("title", "Object")), schema)
            values = schema.get("additionalProperties")
            return dict[str, self.of(values) if isinstance(values, dict) else Any]  # type: ignore[misc]
        return _SCALARS.get(str(kind), Any)

    def model(self, name: str, schema: dict[str, Any]) -> type[BaseModel]:
        required = set(schema.get("required", []))
        fields: dict[str, Any] = {
            field: (self.of(prop), Field(... if field in required else prop.get("default")))
            for field, prop in schema.get("properties", {}).items()
        }
        model: type[BaseModel] = create_model(name, __config__=ConfigDict(extra="allow"), **fields)
        return model


def field_adapters(schema: dict[str, Any]) -> dict[str, TypeAdapter[Any]]:
    """A validator per property of an object schema, by name: it turns a field's JSON into its type."""
    types = _Types(schema)
    return {name: TypeAdapter(types.of(prop)) for name, prop in schema.get("properties", {}).items()}
