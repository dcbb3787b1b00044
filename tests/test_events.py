"""Live tokens over SSE that no client can miss (scripted, streaming LM)."""

import asyncio
import json
import uuid
from collections.abc import Callable

import httpx
import pytest

from harness.sse_client import Received, aread_events, read_events
from tests.conftest import Stack
from tests.test_jobs import QA_FIELDS, expected_result, unique

pytestmark = pytest.mark.e2e


def field_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def submit(client: httpx.Client, question: str) -> str:
    response = client.post("/jobs", json={"question": question})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def assert_complete_stream(received: Received, question: str) -> None:
    assert received.seqs == list(range(1, len(received.seqs) + 1)), "sequences must be 1..n with no gap or repeat"
    statuses = [e["data"]["status"] for e in received.events if e["type"] == "status"]
    assert statuses == ["queued", "running"]
    assert [e["type"] for e in received.events].count("result") == 1
    result = received.terminal["data"]["result"]
    assert result == expected_result(question)
    assert received.text() == {name: field_text(value) for name, value in result.items()}


def test_tokens_arrive_in_order_and_spell_every_result_field(client: httpx.Client) -> None:
    question = unique("Why do cats purr? [lm:tps=50]")
    received = read_events(client, submit(client, question))

    assert_complete_stream(received, question)
    tokens = [e for e in received.events if e["type"] == "token"]
    assert len(tokens) > 10
    # Fields stream one after the other, in the signature's order.
    assert list(dict.fromkeys(t["data"]["field"] for t in tokens)) == QA_FIELDS


def test_late_subscriber_gets_every_token(client: httpx.Client) -> None:
    question = unique("What is late? [lm:tps=200]")
    job_id = submit(client, question)
    live = read_events(client, job_id)

    late = read_events(client, job_id)

    assert late.events == live.events
    assert_complete_stream(late, question)


def test_reconnecting_with_last_event_id_yields_the_same_text_as_an_uninterrupted_client(client: httpx.Client) -> None:
    question = unique("Tell me slowly. [lm:tps=40]")
    job_id = submit(client, question)

    first = read_events(client, job_id, stop_after=8)
    assert first.events[-1]["type"] != "result", "the job should still be streaming when we disconnect"
    rest = read_events(client, job_id, last_event_id=first.seqs[-1])
    resumed = Received(first.events + rest.events)
    uninterrupted = read_events(client, job_id)

    assert resumed.events == uninterrupted.events
    assert resumed.text() == uninterrupted.text()
    assert_complete_stream(resumed, question)


def test_last_event_id_as_query_parameter_resumes_too(client: httpx.Client) -> None:
    question = unique("Resume by query. [lm:tps=200]")
    job_id = submit(client, question)
    whole = read_events(client, job_id)

    response = client.get(f"/jobs/{job_id}/events", params={"last_event_id": whole.seqs[-3]})

    assert response.status_code == 200
    assert [line for line in response.text.splitlines() if line.startswith("id:")] == [
        f"id: {seq}" for seq in whole.seqs[-2:]
    ]


def test_a_hundred_concurrent_subscribers_receive_identical_streams(client: httpx.Client, stack: Stack) -> None:
    question = unique("Everyone watch. [lm:tps=50]")
    job_id = submit(client, question)

    async def everyone() -> list[Received]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, limits=limits) as aclient:
            return await asyncio.gather(*(aread_events(aclient, job_id) for _ in range(100)))

    streams = asyncio.run(everyone())

    assert all(s.events == streams[0].events for s in streams)
    assert_complete_stream(streams[0], question)


def test_a_failed_job_ends_its_stream_with_one_error_event(client: httpx.Client) -> None:
    received = read_events(client, submit(client, unique("[lm:garbage]")))

    assert received.terminal["type"] == "error"
    assert received.terminal["data"]["status"] == "failed"
    assert received.terminal["data"]["error"]["type"] == "AdapterParseError"
    assert [e["type"] for e in received.events].count("error") == 1


def test_a_cache_hit_still_streams_every_field(make_stack: Callable[[], Stack]) -> None:
    stack = make_stack()
    stack.extra_env = {"LM_CACHE": "true", "DSPY_CACHEDIR": str(stack_cache_dir())}
    stack.start_worker()
    stack.start_api()
    question = unique("Ask me twice.")
    with stack.client() as client:
        first = read_events(client, submit(client, question))
        second = read_events(client, submit(client, question))

    assert_complete_stream(first, question)
    assert_complete_stream(second, question)
    # From the cache the whole field arrives as one token.
    assert len([e for e in second.events if e["type"] == "token"]) == 4


def stack_cache_dir() -> str:
    from harness.processes import ARTIFACTS

    path = ARTIFACTS / f"dspy-cache-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return str(path)


def test_unknown_job_events_are_404_before_the_stream_opens(client: httpx.Client) -> None:
    response = client.get(f"/jobs/{uuid.uuid4().hex}/events")

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")


def test_malformed_last_event_id_is_400(client: httpx.Client) -> None:
    job_id = submit(client, unique("anything"))
    for bad in ("abc", "-1", "1.5"):
        response = client.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": bad})
        assert response.status_code == 400, bad
        assert "Last-Event-ID" in response.json()["detail"]


def test_a_client_already_past_the_end_gets_an_empty_stream_not_a_hang(client: httpx.Client) -> None:
    job_id = submit(client, unique("short [lm:tps=500]"))
    whole = read_events(client, job_id)

    rest = read_events(client, job_id, last_event_id=whole.seqs[-1] + 100)

    assert rest.events == []
