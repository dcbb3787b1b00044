"""How the client reads a job's event stream (no processes): typed events, keep-alives, attempts."""

import json

from dspy_jobs_client import JobEvent, ResultEvent, StatusEvent, TokenEvent, Transcript
from dspy_jobs_client.events import parse_event
from httpx_sse import ServerSentEvent
from httpx_sse._decoders import SSEDecoder

RECORD = json.dumps(
    {"id": "j1", "program": "qa", "status": "succeeded", "created_at": "2026-12-01T23:00:00Z", "result": {"answer": 4}}
)


def decoded(*lines: str) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return [sse for sse in map(decoder.decode, lines) if sse is not None]


def test_keep_alive_comments_and_unknown_kinds_of_event_are_not_handed_over() -> None:
    events = decoded(
        "id: 1", "event: status", 'data: {"status":"queued"}', "",
        ": ping - 2026-12-01 21:00:00", "",
        "id: 2", "event: something_newer", 'data: {"x":1}', "",
        "id: 3", "event: token", 'data: {"field":"answer","text":"4"}', "",
    )  # fmt: skip

    parsed = [parse_event(sse) for sse in events]

    assert [type(e).__name__ if e else None for e in parsed] == ["StatusEvent", None, None, "TokenEvent"]
    assert parsed[3] == TokenEvent(3, "answer", "4")


def test_the_terminal_event_carries_the_typed_record() -> None:
    [sse] = decoded("id: 9", "event: result", f"data: {RECORD}", "")

    event = parse_event(sse)

    assert isinstance(event, ResultEvent) and event.terminal
    assert event.job.result == {"answer": 4}


def test_a_transcript_drops_the_text_of_an_attempt_that_was_retried() -> None:
    transcript = Transcript()
    events: list[JobEvent] = [
        StatusEvent(1, "running", {"status": "running", "attempt": 1}),
        TokenEvent(2, "answer", "half of"),
        StatusEvent(3, "retrying", {"status": "retrying", "delay_s": 0.1}),
        StatusEvent(4, "running", {"status": "running", "attempt": 2}),
        TokenEvent(5, "answer", "The "),
        TokenEvent(6, "answer", "answer"),
        TokenEvent(7, "reasoning", "Because."),
    ]
    for event in events:
        transcript.apply(event)

    assert transcript.fields == {"answer": "The answer", "reasoning": "Because."}
