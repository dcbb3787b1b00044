"""OpenAI's batch files, read and written: the input file's lines to our batch items, items to output lines.

An input file is JSONL, one request a line, as OpenAI's Batch API takes it:
`{"custom_id": ..., "method": "POST", "url": "/v1/chat/completions", "body": {"model": ..., "messages": [...]}}`.
`read_requests` checks every line the way OpenAI does before anything runs
(a line that is not JSON, a `custom_id` missing or repeated, another method
or endpoint, a `model` that is not one of our programs, messages the program
cannot take) and answers either the items of one batch or the errors, each
naming its line. One batch runs one program, so every line names the same
`model`; a temperature, if given, is the same on every line too.

Output and error files are written from the batch's items as they ended
(`output_line`, `error_line`): a succeeded item's `response.body` is the
`chat.completion` the chat route answers; a failed one's the OpenAI error
that route answers; an item that never ran (expired, cancelled) has no
response and an `error` saying why.
"""

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from api import chat_format
from api.chat_format import ChatCompletionRequest, ChatFormatError, ChatProgram

ENDPOINT = "/v1/chat/completions"
# Errors reported for one file, at most: past that, one more says how many were left out.
MAX_ERRORS = 100


@dataclass(frozen=True)
class LineError:
    line: int
    code: str
    message: str
    param: str | None = None

    def public(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass
class Requests:
    """What a valid file asks for: one program's items, in order, with the options they share."""

    program: str | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    temperature: float | None = None
    as_json: bool = False
    errors: list[LineError] = field(default_factory=list)


def read_requests(content: bytes, programs: Callable[[str], ChatProgram | str], max_requests: int) -> Requests:
    """The file's requests, or its errors. `programs(name)` answers a program, or why it cannot be used."""
    found = Requests()
    seen: set[str] = set()
    temperatures: set[float | None] = set()
    formats: set[bool] = set()
    lines = content.splitlines()
    requests = [(number, raw) for number, raw in enumerate(lines, start=1) if raw.strip()]
    if not requests:
        found.errors.append(LineError(1, "empty_file", "the file holds no request"))
        return found
    if len(requests) > max_requests:
        found.errors.append(LineError(1, "too_many_requests", f"{len(requests)} requests; at most {max_requests}"))
        return found
    for number, raw in requests:
        error = _read_line(number, raw, programs, found, seen, temperatures, formats)
        if error is not None:
            found.errors.append(error)
            if len(found.errors) >= MAX_ERRORS:
                found.errors.append(LineError(number, "too_many_errors", "the first errors only; fix them first"))
                break
    if not found.errors and len(temperatures) > 1:
        found.errors.append(LineError(1, "mixed_temperature", "every request of a batch must ask the same temperature"))
    if not found.errors and len(formats) > 1:
        found.errors.append(
            LineError(1, "mixed_response_format", "every request of a batch must ask the same response_format")
        )
    if not found.errors:
        found.temperature = next(iter(temperatures))
        found.as_json = next(iter(formats))
    return found


def _read_line(
    number: int,
    raw: bytes,
    programs: Callable[[str], ChatProgram | str],
    found: Requests,
    seen: set[str],
    temperatures: set[float | None],
    formats: set[bool],
) -> LineError | None:
    try:
        request = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        return LineError(number, "invalid_json", f"not a JSON object: {e}")
    if not isinstance(request, dict):
        return LineError(number, "invalid_json", "not a JSON object")
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 256:
        return LineError(number, "invalid_custom_id", "custom_id must be a string of 1 to 256 characters", "custom_id")
    if custom_id in seen:
        return LineError(number, "duplicate_custom_id", f"custom_id {custom_id!r} is used more than once", "custom_id")
    seen.add(custom_id)
    if request.get("method") != "POST":
        return LineError(number, "invalid_method", "method must be POST", "method")
    if request.get("url") != ENDPOINT:
        return LineError(number, "invalid_url", f"url must be {ENDPOINT} (the batch's endpoint)", "url")
    try:
        body = ChatCompletionRequest.model_validate(request.get("body"))
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors())
        return LineError(number, "invalid_body", problems, "body")
    if body.stream:
        return LineError(number, "invalid_body", "stream is not available in a batch", "body.stream")
    program = programs(body.model)
    if isinstance(program, str):
        return LineError(number, "model_not_found", program, "body.model")
    if found.program is not None and body.model != found.program:
        return LineError(
            number, "mixed_model", f"every request of a batch must name one model; this one names {body.model!r}, "
            f"an earlier one {found.program!r}", "body.model",
        )  # fmt: skip
    try:
        inputs = chat_format.program_input(program, body.messages)
    except ChatFormatError as e:
        return LineError(number, "invalid_body", e.message, f"body.{e.param}")
    found.program = body.model
    found.items.append({**inputs, "custom_id": custom_id})
    temperatures.add(body.temperature)
    formats.add(body.response_format is not None and body.response_format.type != "text")
    return None


def request_id(item: dict[str, Any]) -> str:
    return f"batch_req_{item['id']}"


def output_line(program: ChatProgram, record: dict[str, Any], as_json: bool) -> bytes:
    """A succeeded item, as OpenAI's output file has it."""
    return _line(
        {
            "id": request_id(record),
            "custom_id": record.get("custom_id"),
            "response": {
                "status_code": 200,
                "request_id": record["id"],
                "body": chat_format.completion(program, record, as_json),
            },
            "error": None,
        }
    )


def error_line(record: dict[str, Any]) -> bytes:
    """An item that did not succeed, as OpenAI's error file has it."""
    if record["status"] in ("expired", "cancelled") and not record.get("attempts"):
        code = "batch_expired" if record["status"] == "expired" else "batch_cancelled"
        error = {"code": code, "message": f"this request was not run: the batch was {record['status']} first"}
        return _line({"id": request_id(record), "custom_id": record.get("custom_id"), "response": None, "error": error})
    status, body = chat_format.job_failure(record)
    response = {"status_code": status, "request_id": record["id"], "body": body}
    return _line({"id": request_id(record), "custom_id": record.get("custom_id"), "response": response, "error": None})


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def lines_of(records: Iterable[dict[str, Any]], succeeded: bool, program: ChatProgram, as_json: bool) -> bytes:
    """The output (`succeeded`) or error file's lines for these item records."""
    return b"".join(
        output_line(program, r, as_json) if succeeded else error_line(r)
        for r in records
        if (r["status"] == "succeeded") == succeeded
    )
