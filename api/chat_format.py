"""OpenAI's chat format on our programs: messages to a program's input, a job's record to a `chat.completion`,
a job's events to `chat.completion.chunk`s. Pure (no I/O), so every rule here is unit-tested without a process
(tests/test_chat_format.py); the routes are api/routes/openai_chat.py.

The rules, and why:

- The input is the last `user` message. Our programs are single-turn (a signature's input fields, not a
  conversation), so earlier messages (a front end's system prompt, the history) are left out rather than glued
  into the input, which would change what the program was optimized on.
- A program whose only input field is a string (qa's `question`, triage's `ticket`) takes the message's text as
  that field, so a plain chat front end works. A text that is a JSON object naming only the program's input
  fields (`{"ticket": "..."}`) is read as the input instead, so the JSON form works for every program. Any other
  program takes the text as a JSON object of its input fields. What does not fit is a 400 naming the message.
- The answer is the text of the program's answer field when it has one: a string field named `answer` (DSPy's
  convention, `question -> answer`), else its only output field besides ChainOfThought's `reasoning`, if that is
  a string. Front ends show text, and for qa the answer is what a person asked for. Any other program (triage:
  category, urgency, summary) answers its whole prediction as JSON, and so does every program asked for
  `response_format: {"type": "json_object"}`, and every program on `/invocations` (MLflow's DSPy chat models
  answer `json.dumps(prediction)`).
- Streaming sends the answer field's tokens as they are written. A `running` event starts a new attempt, whose
  tokens may not be the ones already sent: `AnswerStream` sends only text that extends what the client has,
  and ends the stream with an error if the finished answer does not begin with what was sent (the attempt that
  was retried wrote something else), so the joined deltas are always the answer, or the stream says they are
  not. A JSON answer streams as one delta once the job has succeeded (a half-written JSON object is no use to
  anyone).
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.errors import openai_error

ANSWER_FIELD = "answer"
REASONING_FIELD = "reasoning"  # ChainOfThought's own output field, written before the answer


class ChatFormatError(ValueError):
    """A request that does not fit the program: a 400 naming `param`."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# --- Requests -------------------------------------------------------------------------------------------


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field(description="Only `text` parts can be read.")
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = Field(
        None, description="The last `user` message's is the program's input; other messages are not used."
    )


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"] = Field(
        description="`json_object` or `json_schema`: the content is the whole prediction as JSON (its schema is "
        "the program's, whatever `json_schema` says)."
    )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(False, description="Send one more chunk with `usage` and no choices at the end.")


# OpenAI's request has many more fields (max_tokens, top_p, stop, tools, user, ...); front ends send them
# unasked, so they are accepted and ignored rather than refused: the program's artifact fixes the LM call.
_IGNORED = "Fields of OpenAI's request not listed here are accepted and ignored."


class ChatOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    messages: list[ChatMessage] = Field(min_length=1, description="The last `user` message is the input.")
    stream: bool = Field(False, description="Answer `chat.completion.chunk` server-sent events.")
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Sampling temperature for this job only.")
    n: int | None = Field(None, ge=1, le=1, description="Only 1: a program writes one answer.")


class ChatCompletionRequest(ChatOptions):
    __doc__ = "OpenAI's chat request; `model` names one of our programs (`GET /v1/models`). " + _IGNORED

    model: str = Field(min_length=1, max_length=256, description="A program's name, as `GET /v1/models` lists.")
    response_format: ResponseFormat | None = None

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"model": "qa", "messages": [{"role": "user", "content": "What is 2+2?"}]}]},
    )


class InvocationParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    program: str | None = Field(None, min_length=1, max_length=256, description="The program to run.")


class InvocationsRequest(ChatOptions):
    __doc__ = "MLflow's chat request (`llm/v1/chat`), as `mlflow models serve` takes it. " + _IGNORED

    model: str | None = Field(
        None, min_length=1, max_length=256, description="The program to run; default: the default program."
    )
    params: InvocationParams | None = Field(None, description="MLflow's inference params: `program` selects one.")

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"messages": [{"role": "user", "content": "Who wrote Hamlet?"}]}]},
    )


# --- Responses ------------------------------------------------------------------------------------------


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"]
    content: str = Field(description="The answer field's text, or the whole prediction as JSON.")


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: None = None
    finish_reason: Literal["stop"]


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str = Field(description="`chatcmpl-<job id>`: the job is `GET /jobs/<job id>`.")
    object: Literal["chat.completion"]
    created: int = Field(description="When the job was submitted (unix seconds).")
    model: str = Field(description="The program that answered.")
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage = Field(description="LM tokens the job spent (every LM call of the program).")


class ModelObject(BaseModel):
    id: str = Field(description="The program's name: the `model` of a chat request.")
    object: Literal["model"] = "model"
    created: int = Field(description="When its artifact was built (unix seconds; 0 if unknown).")
    owned_by: str = "dspy-jobs"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


# --- Programs -------------------------------------------------------------------------------------------


def _is_text(schema: Mapping[str, Any]) -> bool:
    """A plain string field: not a Literal (enum), not optional (anyOf), not a structure."""
    return schema.get("type") == "string" and "enum" not in schema and "const" not in schema


def input_text_field(input_schema: Mapping[str, Any]) -> str | None:
    """The program's input field when it is its only one and a string."""
    properties: dict[str, Any] = input_schema.get("properties", {})
    if len(properties) == 1:
        name, schema = next(iter(properties.items()))
        if _is_text(schema):
            return name
    return None


def answer_field(output_schema: Mapping[str, Any]) -> str | None:
    """The output field whose text is the answer (see the module docstring), or None: answer in JSON."""
    properties: dict[str, Any] = output_schema.get("properties", {})
    if ANSWER_FIELD in properties and _is_text(properties[ANSWER_FIELD]):
        return ANSWER_FIELD
    others = [name for name in properties if name != REASONING_FIELD]
    if len(others) == 1 and _is_text(properties[others[0]]):
        return others[0]
    return None


@dataclass(frozen=True)
class ChatProgram:
    name: str
    input_model: type[BaseModel]  # validates the input as `POST /programs/{name}/jobs` does
    input_field: str | None  # the only input field, a string: takes the text as it is
    answer_field: str | None  # the output field that is the answer's text; None: the prediction as JSON

    @classmethod
    def of(cls, name: str, input_model: type[BaseModel], output_schema: Mapping[str, Any]) -> "ChatProgram":
        return cls(name, input_model, input_text_field(input_model.model_json_schema()), answer_field(output_schema))


# --- Messages to inputs ---------------------------------------------------------------------------------


def last_user_text(messages: list[ChatMessage]) -> tuple[str, str]:
    """The last `user` message's text and its place in the request (`messages[3].content`, for errors)."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.role != "user":
            continue
        param = f"messages[{index}].content"
        if message.content is None:
            raise ChatFormatError("the last user message has no content: it is the program's input", param)
        if isinstance(message.content, str):
            return message.content, param
        unreadable = sorted({part.type for part in message.content if part.type != "text"})
        if unreadable:
            raise ChatFormatError(f"the programs read text only; the last user message has {unreadable} parts", param)
        return "\n".join(part.text or "" for part in message.content), param
    raise ChatFormatError("no user message: the last `user` message is the program's input", "messages")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(text: str) -> dict[str, Any] | None:
    if not text.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return None
    return value if isinstance(value, dict) else None


def program_input(program: ChatProgram, messages: list[ChatMessage]) -> dict[str, Any]:
    """The job's input from the messages, validated like a job's, or ChatFormatError."""
    text, param = last_user_text(messages)
    fields = list(program.input_model.model_fields)
    given = _json_object(text)
    raw: dict[str, Any]
    if program.input_field is not None and not (given and set(given) <= set(fields)):
        raw = {program.input_field: text}
    elif given is None:
        raise ChatFormatError(
            f"program {program.name!r} takes the last user message as a JSON object of its input fields {fields}",
            param,
        )
    else:
        raw = given
    try:
        validated = program.input_model.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'input'}: {err['msg']}" for err in e.errors())
        raise ChatFormatError(f"the last user message does not fit program {program.name!r}: {problems}", param) from e
    inputs: dict[str, Any] = validated.model_dump(mode="json", exclude_unset=True)
    return inputs


# --- Records to completions -----------------------------------------------------------------------------


def completion_id(job_id: str) -> str:
    return f"chatcmpl-{job_id}"


def created_s(record: Mapping[str, Any]) -> int:
    """The record's `created_at` (ISO 8601, as the public record has it) in unix seconds."""
    return int(datetime.fromisoformat(str(record["created_at"])).timestamp())


def answer_content(program: ChatProgram, result: Mapping[str, Any] | None, as_json: bool) -> str:
    result = result or {}
    if not as_json and program.answer_field is not None:
        text = result.get(program.answer_field)
        if isinstance(text, str):
            return text
    # A record from an artifact version without the field falls back to the whole prediction.
    return json.dumps(result, ensure_ascii=False)


def usage(record: Mapping[str, Any]) -> dict[str, int]:
    spent = record.get("usage") or {}  # a job answered from the LM cache spent nothing
    prompt, completion = int(spent.get("prompt_tokens") or 0), int(spent.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(program: ChatProgram, record: Mapping[str, Any], as_json: bool) -> dict[str, Any]:
    """The `chat.completion` of a job that succeeded."""
    return {
        "id": completion_id(str(record["id"])),
        "object": "chat.completion",
        "created": created_s(record),
        "model": program.name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer_content(program, record.get("result"), as_json)},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage(record),
    }


def job_failure(record: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """The status and OpenAI error of a job that ended without a result: the status is the job error's `code`
    (HTTP-style by design: 422 unparseable LM output, 504 timed out, 502 provider error, ...)."""
    job_id, status = str(record["id"]), str(record["status"])
    if status == "cancelled":
        return 409, openai_error(
            f"job {job_id} was cancelled before it finished", 409, code="job_cancelled", job_id=job_id
        )
    error = record.get("error") or {}
    code = error.get("code")
    http = code if isinstance(code, int) and 400 <= code <= 599 else 500
    kind = error.get("type") or status
    attempts = error.get("attempts") or record.get("attempts") or 0
    message = f"job {job_id} {status} after {attempts} attempt(s): {kind}: {error.get('message') or status}"
    return http, openai_error(message, http, code=str(kind), job_id=job_id)


def still_running(record: Mapping[str, Any], waited_s: float) -> tuple[int, dict[str, Any]]:
    """A job that has not finished within the wait bound: 504 with its id; it goes on."""
    job_id = str(record["id"])
    message = (
        f"job {job_id} is still {record['status']} after {waited_s:g} s (WAIT_MAX_S, the longest this API waits); "
        f"it goes on: GET /jobs/{job_id}?wait=<s> has its result (asking again would start another job; "
        'with "stream": true there is no such bound)'
    )
    return 504, openai_error(message, 504, code="timeout", job_id=job_id)


# --- Streams --------------------------------------------------------------------------------------------

DONE = b"data: [DONE]\n\n"


def sse(data: Mapping[str, Any]) -> bytes:
    """One server-sent event as OpenAI sends them: a `data:` line, no event name."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


@dataclass
class AnswerStream:
    """The deltas of one field's text across attempts: only text that extends what the client already has.

    `sent` is what the client has. Each attempt writes the field from its start; while its text repeats what
    was sent nothing goes out, past that it does. An attempt that writes something else is `diverged`: it sends
    nothing more, and `finish` tells whether the final text still extends what was sent."""

    sent: str = ""
    _position: int = 0  # how much of the field the current attempt has written
    _diverged: bool = False

    def restart(self) -> None:
        """A new attempt: it writes the field from its start again."""
        self._position, self._diverged = 0, False

    def add(self, text: str) -> str:
        if self._diverged:
            return ""
        start, self._position = self._position, self._position + len(text)
        repeated = self.sent[start : self._position]
        if not text.startswith(repeated):
            self._diverged = True
            return ""
        delta = text[len(repeated) :]
        self.sent += delta
        return delta

    def finish(self, final: str) -> str | None:
        """What is missing of `final` (often ""), or None when what was sent is not its beginning."""
        if not final.startswith(self.sent):
            return None
        delta, self.sent = final[len(self.sent) :], final
        return delta


@dataclass
class ChatStream:
    """The `chat.completion.chunk` events of one job, from its events (`status`, `token`, `result`/`error`)."""

    program: ChatProgram
    job_id: str
    created: int
    as_json: bool
    include_usage: bool = False
    done: bool = False  # the terminal event has been read
    answer: AnswerStream = field(default_factory=AnswerStream)

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": completion_id(self.job_id),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.program.name,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    @property
    def streams_tokens(self) -> bool:
        return not self.as_json and self.program.answer_field is not None

    def start(self) -> bytes:
        return sse(self._chunk({"role": "assistant", "content": ""}))

    def event(self, event_type: str, data: Mapping[str, Any]) -> bytes:
        """The chunks one job event makes (often none)."""
        if event_type == "status" and data.get("status") == "running":
            self.answer.restart()
        elif event_type == "token" and self.streams_tokens and data.get("field") == self.program.answer_field:
            delta = self.answer.add(str(data.get("text", "")))
            if delta:
                return sse(self._chunk({"content": delta}))
        elif event_type in ("result", "error"):
            self.done = True
            return self._end(data)
        return b""

    def _end(self, record: Mapping[str, Any]) -> bytes:
        if record.get("status") != "succeeded":
            return sse(job_failure(record)[1])
        delta = self.answer.finish(answer_content(self.program, record.get("result"), self.as_json))
        if delta is None:
            message = (
                f"job {self.job_id} was retried after part of its answer was streamed, and the retry wrote a "
                f"different answer; the whole answer is in GET /jobs/{self.job_id}"
            )
            return sse(openai_error(message, 500, code="answer_changed_on_retry", job_id=self.job_id))
        out = [sse(self._chunk({"content": delta}))] if delta else []
        out.append(sse(self._chunk({}, "stop")))
        if self.include_usage:
            out.append(sse({**self._chunk({}), "choices": [], "usage": usage(record)}))
        out.append(DONE)
        return b"".join(out)

    def interrupted(self) -> bytes:
        """The stream ends before the job did (the API shuts down, or lost Redis): say so, never end silently."""
        message = (
            f"the stream ended before job {self.job_id} did (the API restarted or lost Redis); the job goes on: "
            f"GET /jobs/{self.job_id}"
        )
        return sse(openai_error(message, 503, code="stream_interrupted", job_id=self.job_id))
