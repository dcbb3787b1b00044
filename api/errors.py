"""The shape of every error response, and the responses every operation can give, in the OpenAPI document.

Every error is `{"message": ..., "detail": ...}`, whoever raises it (a
route, the key check, the body limit, the Redis handler, Starlette's own
404 and 405): `message` is one line a person can act on, `detail` the same
sentence or, for a 422 from validation, one entry per invalid field. Some
come from middleware or exception handlers, not from any one route (401,
413, 503), so they are added to the document here, in one place, instead of
on every route. The fuzz tests (tests/test_fuzz.py) hold
every response to this document.

The OpenAI-compatible routes (`/v1/...` and `/invocations`, api/routes/openai_chat.py)
answer errors in OpenAI's shape instead, `{"error": {"message", "type", "param", "code"}}`,
whoever raises them: the clients written for OpenAI read only that shape (the `openai`
package turns it into its typed exceptions). `openai_shaped(path)` decides, here,
so the handlers in api/main.py and the middleware that answer before any route runs
(401, 413) agree on it.
"""

import json
from collections.abc import Collection
from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel, Field
from starlette.types import Send

from core.redact import without_credentials


class ErrorBody(BaseModel):
    message: str = Field(description="What was wrong, in one line (for a 422: every invalid field).")
    detail: str | list[dict[str, Any]] = Field(
        description="The same sentence, or (a 422 from validation) one entry per invalid field."
    )


class OpenAIErrorDetail(BaseModel):
    message: str = Field(description="What was wrong, in one line.")
    type: str = Field(description="`invalid_request_error`, `rate_limit_error` or `server_error`.")
    param: str | None = Field(None, description="The request field at fault, when one is.")
    code: str | None = Field(None, description="A machine-readable code: `model_not_found`, `timeout`, ...")
    job_id: str | None = Field(None, description="The job the request ran as, when it ran as one: `GET /jobs/{id}`.")


class OpenAIErrorBody(BaseModel):
    error: OpenAIErrorDetail


# Paths that answer errors (and everything else) in OpenAI's shape.
OPENAI_PATH_PREFIX = "/v1/"
MLFLOW_INVOCATIONS_PATH = "/invocations"


def openai_shaped(path: str) -> bool:
    return path.startswith(OPENAI_PATH_PREFIX) or path == MLFLOW_INVOCATIONS_PATH


# OpenAI's codes for the statuses anything but a route's own error gives.
_OPENAI_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    422: "invalid_request",
    429: "rate_limit_exceeded",
    503: "service_unavailable",
}


def openai_error(
    message: str, status: int, *, param: str | None = None, code: str | None = None, job_id: str | None = None
) -> dict[str, Any]:
    """OpenAI's error body; its `type` follows the status, as OpenAI's does."""
    kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    error: dict[str, Any] = {
        # What a request echoes may hold a lone surrogate, which no response can carry.
        "message": without_credentials(message).encode("utf-8", "replace").decode("utf-8"),
        "type": kind,
        "param": param.encode("utf-8", "replace").decode("utf-8") if param is not None else None,
        "code": code or _OPENAI_CODES.get(status),
    }
    if job_id is not None:
        error["job_id"] = job_id
    return {"error": error}


class OpenAIError(HTTPException):
    """An error an OpenAI-compatible route raises with its own `param` and `code` (answered by api/main.py)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, headers=headers)
        self.body = openai_error(message, status, param=param, code=code)


def error_content(message: str, detail: str | list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message = without_credentials(message)
    return {"message": message, "detail": message if detail is None else detail}


def error_content_for(
    path: str, status: int, message: str, detail: str | list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The error body for a request to `path`: OpenAI's shape on its routes, ours elsewhere."""
    return openai_error(message, status) if openai_shaped(path) else error_content(message, detail)


def error_bytes(message: str, path: str = "", status: int = 400) -> bytes:
    """The body of an error answered from middleware, before any route runs."""
    return json.dumps(error_content_for(path, status, message)).encode()


async def send_error(send: Send, path: str, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """Answer an error from pure ASGI middleware, in the shape `path` calls for."""
    body = error_bytes(message, path, status)
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


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
    openai_body = OpenAIErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(openai_body.pop("$defs", {}))
    schemas["OpenAIErrorBody"] = openai_body
    ours = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    openai = {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIErrorBody"}}}
    for path, operations in schema.get("paths", {}).items():
        content = openai if openai_shaped(path) else ours
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
