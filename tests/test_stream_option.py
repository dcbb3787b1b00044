"""The `stream` option of jobs and batches, and the short paths that answer `?wait` (real stack, scripted LM)."""

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest

from harness.sse_client import read_events
from tests.conftest import Stack
from tests.test_batches import submit_batch, wait_batch
from tests.test_events import assert_complete_stream, field_text
from tests.test_jobs import QA_FIELDS, expected_result, unique, wait_finished

pytestmark = pytest.mark.e2e

RequestsFor = Callable[[str], list[dict[str, object]]]


def test_a_job_that_does_not_stream_sends_each_field_whole_before_the_result(
    client: httpx.Client, lm_requests: RequestsFor
) -> None:
    question = unique("Whole fields, please.")
    response = client.post("/jobs", json={"question": question, "stream": False})
    assert response.status_code == 202
    assert response.json()["stream"] is False
    job_id = response.json()["id"]

    received = read_events(client, job_id)

    assert_complete_stream(received, question)
    tokens = [e["data"] for e in received.events if e["type"] == "token"]
    result = expected_result(question)
    assert tokens == [{"field": name, "text": field_text(result[name])} for name in QA_FIELDS]
    [sent] = lm_requests(question)
    assert sent["stream"] is False, "the LM was asked for the whole answer at once"


def test_jobs_stream_by_default(client: httpx.Client, lm_requests: RequestsFor) -> None:
    question = unique("Stream me by default.")
    job = client.post("/jobs", json={"question": question}).json()
    assert job["stream"] is True

    received = read_events(client, job["id"])

    assert_complete_stream(received, question)
    assert len([e for e in received.events if e["type"] == "token"]) > len(QA_FIELDS)
    [sent] = lm_requests(question)
    assert sent["stream"] is True


def test_a_late_subscriber_to_a_job_that_does_not_stream_gets_the_same_events(client: httpx.Client) -> None:
    question = unique("Late to a quiet job.")
    job_id = client.post("/jobs", json={"question": question, "stream": False}).json()["id"]
    live = read_events(client, job_id)

    late = read_events(client, job_id)

    assert late.events == live.events
    assert_complete_stream(late, question)


def test_wait_answers_exactly_what_get_answers_once_the_job_is_done(client: httpx.Client) -> None:
    for stream in (False, True):
        waited = client.post("/jobs", params={"wait": 20}, json={"question": unique("Same?"), "stream": stream})
        assert waited.status_code == 200
        assert waited.headers["location"] == f"/jobs/{waited.json()['id']}"

        fetched = client.get(waited.headers["location"])

        assert waited.json() == fetched.json()
        assert waited.json()["status"] == "succeeded"


def test_wait_returns_a_failed_job_with_its_error(client: httpx.Client) -> None:
    response = client.post("/jobs", params={"wait": 20}, json={"question": unique("[lm:garbage]"), "stream": False})

    assert response.status_code == 200
    assert response.json()["status"] == "failed"
    assert response.json()["error"]["type"] == "AdapterParseError"


def test_a_cancelled_job_that_does_not_stream_stays_cancelled_and_writes_no_result(client: httpx.Client) -> None:
    job_id = client.post("/jobs", json={"question": unique("Slow [lm:delay_s=2]"), "stream": False}).json()["id"]
    deadline = time.monotonic() + 10
    while client.get(f"/jobs/{job_id}").json()["status"] != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)

    assert client.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    time.sleep(2.5)  # the LM answers meanwhile; the worker must drop the answer

    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["result"] is None
    received = read_events(client, job_id)
    assert [e["type"] for e in received.events] == ["status", "status", "error"]


def test_batch_items_do_not_stream_unless_the_batch_asks(client: httpx.Client, lm_requests: RequestsFor) -> None:
    quiet = [{"question": unique(f"quiet item {i}")} for i in range(3)]
    loud = [{"question": unique(f"loud item {i}")} for i in range(3)]

    quiet_batch = submit_batch(client, quiet)
    loud_batch = submit_batch(client, loud, stream=True)

    assert quiet_batch["stream"] is False and loud_batch["stream"] is True
    for batch, items, streamed in ((quiet_batch, quiet, False), (loud_batch, loud, True)):
        assert wait_batch(client, batch["id"])["status"] == "completed"
        for index, item in enumerate(items):
            job = wait_finished(client, f"{batch['id']}-{index}")
            assert job["stream"] is streamed
            assert job["result"] == expected_result(item["question"])
            assert [r["stream"] for r in lm_requests(item["question"])] == [streamed]


def test_two_requests_waiting_on_one_job_both_get_it(stack: Stack) -> None:
    body = {"question": unique("twice [lm:delay_s=1]"), "stream": False}
    headers = {"Idempotency-Key": unique("same-job")}

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as aclient:

            async def later() -> httpx.Response:
                await asyncio.sleep(0.3)  # the job exists and runs: this one replays it and waits too
                return await aclient.post("/jobs", params={"wait": 20}, headers=headers, json=body)

            return list(
                await asyncio.gather(aclient.post("/jobs", params={"wait": 20}, headers=headers, json=body), later())
            )

    first, again = asyncio.run(both())

    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert first.json()["status"] == "succeeded"
    assert again.headers["idempotent-replayed"] == "true"
