"""The shape of every error response, and the responses every operation can give, in the OpenAPI document.

Every error is `{"message": ..., "detail": ...}`, whoever raises it (a
route, the key check, the body limit, the Redis handler, Starlette's own
404 and 405): `message` is one line a person can act on, `detail` the same
sentence or, for a 422 from validation, one entry per invalid field. Some
come from middleware or exception handlers, not from any one route (401,
413, 503), so they are added to the document here, in one place, instead of
on every route. The fuzz tests (tests/test_fuzz.py) hold
every response to this document.
"""

import json
from collections.abc import Collection
from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    message: str = Field(description="What was wrong, in one line (for a 422: every invalid field).")
    detail: str | list[dict[str, Any]] = Field(
        description="The same sentence, or (a 422 from validation) one entry per invalid field."
    )


def error_content(message: str, detail: str | list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"message": message, "detail": message if detail is None else detail}


def error_bytes(message: str) -> bytes:
    """The body of an error answered from middleware, before any route runs."""
    return json.dumps(error_content(message)).encode()


_CROSS_CUTTING = {
    "401": "No API key, or not a valid one (when the server has keys configured).",
    "503": "Redis or the queue is unavailable; retry shortly.",
}
_BODY_TOO_LARGE = "The body is larger than the server's limit; nothing was read further."
_BODY_UNREADABLE = "The body could not be parsed at all (not UTF-8 JSON); nothing was stored."


def document_errors(schema: dict[str, Any], public_paths: Collection[str]) -> dict[str, Any]:
    """Every 4xx/5xx response gets the error schema; every operation the responses middleware may give
    (no 401 on `public_paths`)."""
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            if path not in public_paths:
                for code, description in _CROSS_CUTTING.items():
                    responses.setdefault(code, {"description": description})
            if method in ("post", "put", "patch"):
                responses.setdefault("413", {"description": _BODY_TOO_LARGE})
                responses.setdefault("400", {"description": _BODY_UNREADABLE})
            for code, response in responses.items():
                if code[:1] in ("4", "5"):
                    response["content"] = content
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    return schema
