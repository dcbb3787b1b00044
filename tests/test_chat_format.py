"""The OpenAI chat format's rules (api/chat_format.py), without a process: messages to inputs, records to
completions, job events to chunks, and the stream's honesty across retried attempts."""

import json
from typing import Any

import pytest
from dspy_jobs_client.schemas import model_from_schema

from api.chat_format import (
    AnswerStream,
    ChatFormatError,
    ChatMessage,
    ChatProgram,
    ChatStream,
    answer_content,
    answer_field,
    completion,
    input_text_field,
    job_failure,
    program_input,
    still_running,
)
from api.errors import openai_error, openai_shaped
from api.program_catalog import Catalog
from api.schemas import ProgramInput
from core.settings import get_settings

# The inputs of tests/programs/extractor.py: a program whose input is more than one text.
EXTRACTOR_INPUT = {
    "type": "object",
    "properties": {
        "note": {"type": "string"},
        "priority": {"type": "integer"},
        "labels": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["note", "priority", "labels"],
}
EXTRACTOR_OUTPUT = {
    "type": "object",
    "properties": {"colour": {"type": "string", "enum": ["red", "green"]}, "count": {"type": "integer"}},
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(get_settings())


def chat_program(catalog: Catalog, name: str) -> ChatProgram:
    models = catalog.programs[name].models
    assert models is not None
    return ChatProgram.of(name, models.input, models.output.model_json_schema())


@pytest.fixture(scope="module")
def qa(catalog: Catalog) -> ChatProgram:
    return chat_program(catalog, "qa")


@pytest.fixture(scope="module")
def triage(catalog: Catalog) -> ChatProgram:
    return chat_program(catalog, "triage")


@pytest.fixture(scope="module")
def extractor() -> ChatProgram:
    model = model_from_schema("ChatExtractorInput", EXTRACTOR_INPUT, prefix="ChatExtractor", base=ProgramInput)
    return ChatProgram.of("extractor", model, EXTRACTOR_OUTPUT)


def user(content: Any) -> ChatMessage:
    return ChatMessage.model_validate({"role": "user", "content": content})


def test_qa_answers_its_answer_field_and_triage_its_whole_prediction(qa: ChatProgram, triage: ChatProgram) -> None:
    assert (qa.input_field, qa.answer_field) == ("question", "answer")
    # category (a Literal), urgency (an int) and summary: no one field is the answer.
    assert (triage.input_field, triage.answer_field) == ("ticket", None)


def test_the_only_text_output_besides_reasoning_is_the_answer() -> None:
    text = {"type": "string"}
    assert answer_field({"properties": {"reasoning": text, "reply": text}}) == "reply"
    assert answer_field({"properties": {"reply": text, "mood": text}}) is None
    assert answer_field({"properties": {"answer": {"type": "integer"}}}) is None
    assert answer_field({"properties": {"label": {"type": "string", "enum": ["a", "b"]}}}) is None


def test_a_program_with_more_than_one_input_or_a_typed_one_has_no_text_input() -> None:
    assert input_text_field(EXTRACTOR_INPUT) is None
    assert input_text_field({"properties": {"n": {"type": "integer"}}}) is None
    assert input_text_field({"properties": {"q": {"type": "string"}}}) == "q"


def test_the_last_user_message_is_the_input_and_the_rest_is_left_out(qa: ChatProgram) -> None:
    messages = [
        ChatMessage(role="system", content="You are terse."),
        user("first question"),
        ChatMessage(role="assistant", content="first answer"),
        user("second question"),
        ChatMessage(role="assistant", content="a prefill the program does not read"),
    ]

    assert program_input(qa, messages) == {"question": "second question"}


def test_text_parts_are_joined(qa: ChatProgram) -> None:
    parts = [{"type": "text", "text": "Why is"}, {"type": "text", "text": "the sky blue?"}]

    assert program_input(qa, [user(parts)]) == {"question": "Why is\nthe sky blue?"}


def test_a_json_object_of_the_input_fields_is_read_as_the_input(triage: ChatProgram) -> None:
    assert program_input(triage, [user('{"ticket": "I was charged twice"}')]) == {"ticket": "I was charged twice"}


def test_json_that_names_other_fields_is_just_the_text_of_a_one_text_program(qa: ChatProgram) -> None:
    content = '{"city": "Paris", "question": "what is this?"}'

    assert program_input(qa, [user(content)]) == {"question": content}


def test_a_program_of_several_inputs_takes_a_json_object(extractor: ChatProgram) -> None:
    content = json.dumps({"note": "red car", "priority": 2, "labels": ["x"]})

    assert program_input(extractor, [user(content)]) == {"note": "red car", "priority": 2, "labels": ["x"]}


@pytest.mark.parametrize(
    "content,named",
    [
        ("red car, urgent", "JSON object"),
        ('["red car"]', "JSON object"),
        ('{"note": "red car", "priority": NaN, "labels": []}', "JSON object"),
        ("[" * 100_000 + "]" * 100_000, "JSON object"),
        ("{" + '"a": {' * 5_000 + "1" + "}" * 5_001, "JSON object"),
        ('{"note": "red car", "labels": []}', "priority"),
        ('{"note": "red car", "priority": "high", "labels": []}', "priority"),
        ('{"note": "red car", "priority": 1, "labels": [], "colour": "red"}', "colour"),
        ('{"note": "  ", "priority": 1, "labels": []}', "note"),
    ],
    ids=[
        "not json",
        "a list",
        "NaN",
        "nested too deep",
        "objects nested too deep",
        "a field missing",
        "a field mistyped",
        "an unknown field",
        "a blank text",
    ],
)
def test_content_that_does_not_fit_is_refused_naming_the_message_and_the_field(
    extractor: ChatProgram, content: str, named: str
) -> None:
    messages = [ChatMessage(role="system", content="x"), user(content)]
    with pytest.raises(ChatFormatError) as refused:
        program_input(extractor, messages)

    assert refused.value.param == "messages[1].content"
    assert named in refused.value.message


@pytest.mark.parametrize(
    "messages,param",
    [
        ([ChatMessage(role="system", content="only a system prompt")], "messages"),
        ([user(None)], "messages[0].content"),
        ([user([{"type": "image_url", "image_url": {"url": "https://x/y.png"}}])], "messages[0].content"),
        ([user("   ")], "messages[0].content"),
        ([user("x" * (get_settings().input_max_chars + 1))], "messages[0].content"),
    ],
    ids=["no user message", "no content", "an image", "blank", "too long"],
)
def test_a_question_the_program_cannot_take_is_refused(
    qa: ChatProgram, messages: list[ChatMessage], param: str
) -> None:
    with pytest.raises(ChatFormatError) as refused:
        program_input(qa, messages)

    assert refused.value.param == param


RECORD: dict[str, Any] = {
    "id": "f" * 32,
    "program": "qa",
    "status": "succeeded",
    "created_at": "2026-12-01T12:00:00Z",
    "attempts": 1,
    "result": {"reasoning": "Because.", "answer": "Paris", "key_concepts": ["France"], "question_type": "factual"},
    "usage": {"prompt_tokens": 800, "completion_tokens": 50, "total_tokens": 850},
}


def test_a_finished_job_is_a_chat_completion_with_its_usage(qa: ChatProgram) -> None:
    answer = completion(qa, RECORD, as_json=False)

    assert answer["id"] == "chatcmpl-" + "f" * 32
    assert answer["object"] == "chat.completion"
    assert answer["created"] == 1_796_126_400
    assert answer["model"] == "qa"
    assert answer["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Paris"}, "logprobs": None, "finish_reason": "stop"}
    ]
    assert answer["usage"] == {"prompt_tokens": 800, "completion_tokens": 50, "total_tokens": 850}


def test_json_is_the_whole_prediction_when_asked_for_or_when_there_is_no_answer_field(
    qa: ChatProgram, triage: ChatProgram
) -> None:
    triaged = {"category": "billing", "urgency": 3, "summary": "Charged twice."}

    assert json.loads(answer_content(qa, RECORD["result"], as_json=True)) == RECORD["result"]
    assert json.loads(answer_content(triage, triaged, as_json=False)) == triaged
    # A record from an artifact without the field (another version) still answers what it has.
    assert json.loads(answer_content(qa, {"other": 1}, as_json=False)) == {"other": 1}


def test_a_job_from_the_cache_reports_no_usage_as_zeros(qa: ChatProgram) -> None:
    assert completion(qa, {**RECORD, "usage": None}, as_json=False)["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
    }


@pytest.mark.parametrize(
    "record,status,code",
    [
        (
            {"status": "failed", "error": {"type": "AdapterParseError", "message": "no", "code": 422}},
            422,
            "AdapterParseError",
        ),
        (
            {"status": "failed", "error": {"type": "LMTimeoutError", "message": "slow", "code": 504}},
            504,
            "LMTimeoutError",
        ),
        ({"status": "failed", "error": {"type": "LMServerError", "message": "500", "code": 502}}, 502, "LMServerError"),
        ({"status": "expired", "error": {"type": "JobExpired", "message": "late", "code": 408}}, 408, "JobExpired"),
        ({"status": "failed", "error": {"type": "ValueError", "message": "odd"}}, 500, "ValueError"),
        ({"status": "cancelled", "error": None}, 409, "job_cancelled"),
    ],
    ids=["unparseable", "timed out", "provider", "expired", "unexpected", "cancelled"],
)
def test_a_failed_job_is_an_openai_error_with_its_code_as_status(
    record: dict[str, Any], status: int, code: str
) -> None:
    got_status, body = job_failure({**RECORD, "result": None, **record})

    assert got_status == status
    assert body["error"]["code"] == code
    assert body["error"]["job_id"] == RECORD["id"]
    assert set(body["error"]) == {"message", "type", "param", "code", "job_id"}


def test_a_job_past_the_wait_bound_is_a_504_that_says_where_to_poll() -> None:
    status, body = still_running({**RECORD, "status": "running"}, 60)

    assert status == 504
    assert body["error"]["code"] == "timeout"
    assert f"GET /jobs/{RECORD['id']}" in body["error"]["message"]


def test_openai_errors_are_on_the_v1_routes_and_invocations_only() -> None:
    assert openai_shaped("/v1/chat/completions") and openai_shaped("/v1/models") and openai_shaped("/invocations")
    assert not openai_shaped("/jobs") and not openai_shaped("/models") and not openai_shaped("/v1")


def test_an_error_never_carries_a_lone_surrogate() -> None:
    body = openai_error("no model '\ud800'", 404, param="\udfff")

    json.dumps(body).encode()
    assert "\ud800" not in body["error"]["message"]


def test_a_stream_sends_what_extends_the_text_and_nothing_twice() -> None:
    stream = AnswerStream()
    assert [stream.add(t) for t in ["The ", "answer ", "is"]] == ["The ", "answer ", "is"]
    # A retry writes the field again from its start: what the client has is not sent again.
    stream.restart()
    assert [stream.add(t) for t in ["The answer", " is", " 42."]] == ["", "", " 42."]

    assert stream.finish("The answer is 42.") == ""
    assert stream.sent == "The answer is 42."


def test_a_retry_that_writes_something_else_is_caught() -> None:
    stream = AnswerStream()
    stream.add("Paris is")
    stream.restart()

    assert stream.add("Lyon") == ""
    assert stream.add(" is the answer, not Paris") == ""  # nothing more from an attempt that diverged
    assert stream.finish("Lyon is the answer") is None


def test_the_end_of_a_stream_adds_what_the_tokens_missed() -> None:
    stream = AnswerStream()
    stream.add("The answer")

    assert stream.finish("The answer is 42.") == " is 42."


def chunks(raw: bytes) -> list[Any]:
    """The `data:` payloads of an OpenAI stream, parsed ([DONE] kept as it is)."""
    payloads = [line.removeprefix(b"data: ") for line in raw.split(b"\n\n") if line]
    return [payload.decode() if payload == b"[DONE]" else json.loads(payload) for payload in payloads]


Events = list[tuple[str, dict[str, Any]]]


def events_of(answer_text: list[str], retried: bool = False) -> Events:
    tokens: Events = [("token", {"field": "reasoning", "text": "Because."})]
    tokens += [("token", {"field": "answer", "text": t}) for t in answer_text]
    events: Events = [("status", {"status": "queued"}), ("status", {"status": "running", "attempt": 1}), *tokens]
    if retried:
        events += [("status", {"status": "retrying"}), ("status", {"status": "running", "attempt": 2}), *tokens]
    return [*events, ("result", RECORD)]


@pytest.mark.parametrize("retried", [False, True], ids=["one attempt", "retried"])
def test_a_text_stream_spells_the_answer_once_then_stops(qa: ChatProgram, retried: bool) -> None:
    stream = ChatStream(qa, RECORD["id"], 1, as_json=False, include_usage=True)
    raw = stream.start() + b"".join(stream.event(kind, data) for kind, data in events_of(["Pa", "ris"], retried))

    sent = chunks(raw)
    assert sent[-1] == "[DONE]" and stream.done
    usage, finish, *deltas = reversed(sent[:-1])
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 850
    assert finish["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    deltas.reverse()
    assert deltas[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [d["choices"][0]["delta"]["content"] for d in deltas[1:]] == ["Pa", "ris"]
    assert {d["id"] for d in sent[:-1]} == {"chatcmpl-" + RECORD["id"]}
    assert {d["object"] for d in sent[:-1]} == {"chat.completion.chunk"}


def test_a_json_stream_sends_the_prediction_as_one_delta_at_the_end(qa: ChatProgram) -> None:
    stream = ChatStream(qa, RECORD["id"], 1, as_json=True)
    raw = stream.start() + b"".join(stream.event(kind, data) for kind, data in events_of(["Pa", "ris"]))

    _role, content, finish, done = chunks(raw)
    assert json.loads(content["choices"][0]["delta"]["content"]) == RECORD["result"]
    assert finish["choices"][0]["finish_reason"] == "stop" and done == "[DONE]"


def test_a_stream_whose_retry_changed_the_answer_ends_with_an_error(qa: ChatProgram) -> None:
    stream = ChatStream(qa, RECORD["id"], 1, as_json=False)
    events: Events = [
        ("status", {"status": "running", "attempt": 1}),
        ("token", {"field": "answer", "text": "Lyon"}),
        ("status", {"status": "running", "attempt": 2}),
        ("token", {"field": "answer", "text": "Paris"}),
        ("result", RECORD),
    ]
    raw = stream.start() + b"".join(stream.event(kind, data) for kind, data in events)

    *_, last = chunks(raw)
    assert last["error"]["code"] == "answer_changed_on_retry"


def test_a_failed_job_ends_its_stream_with_its_error(qa: ChatProgram) -> None:
    stream = ChatStream(qa, RECORD["id"], 1, as_json=False)
    failed = {
        **RECORD,
        "status": "failed",
        "result": None,
        "error": {"type": "LMTimeoutError", "message": "slow", "code": 504},
    }

    *_, last = chunks(stream.start() + stream.event("error", failed))
    assert last["error"]["code"] == "LMTimeoutError" and stream.done
