"""Submit, poll, validate: the job API against a real stack (scripted LM)."""

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from harness.lm_simulator import scripted_answer
from tests.conftest import OTHER_MODEL, Stack

pytestmark = pytest.mark.e2e

QA_FIELDS = ["reasoning", "answer", "key_concepts", "question_type"]


def unique(question: str) -> str:
    return f"{question} ({uuid.uuid4().hex[:8]})"


def wait_finished(client: httpx.Client, job_id: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled", "expired"):
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s}s")


def expected_result(question: str) -> dict[str, Any]:
    """What the scripted LM's answer parses to."""
    import json

    text = scripted_answer(question, QA_FIELDS)
    return {
        "reasoning": f"Thinking step by step about: {question}",
        "answer": f"The answer to '{question}' is 42.",
        "key_concepts": json.loads(text.split("[[ ## key_concepts ## ]]\n")[1].split("\n")[0]),
        "question_type": "factual",
    }


def test_submit_then_poll_until_succeeded_with_every_result_field(client: httpx.Client) -> None:
    question = unique("Why is the sky blue?")
    response = client.post("/jobs", json={"question": question})

    assert response.status_code == 202
    submitted = response.json()
    assert submitted["status"] == "queued"
    assert response.headers["location"] == f"/jobs/{submitted['id']}"
    assert submitted["links"] == {"self": f"/jobs/{submitted['id']}", "events": f"/jobs/{submitted['id']}/events"}

    job = wait_finished(client, submitted["id"])
    assert job["status"] == "succeeded", job
    assert job["result"] == expected_result(question)
    assert job["error"] is None
    assert job["attempts"] == 1
    assert job["worker"]
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    assert job["usage"]["prompt_tokens"] > 0 and job["usage"]["completion_tokens"] > 0


def test_wait_returns_the_finished_job_inline(client: httpx.Client) -> None:
    question = unique("What is the capital of France?")
    response = client.post("/jobs", params={"wait": 20}, json={"question": question})

    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert response.json()["result"] == expected_result(question)


def test_wait_that_runs_out_returns_202_with_the_job_still_open(client: httpx.Client) -> None:
    response = client.post("/jobs", params={"wait": 0.2}, json={"question": unique("slow [lm:delay_s=2]")})

    assert response.status_code == 202
    assert response.json()["status"] in ("queued", "running")
    assert wait_finished(client, response.json()["id"])["status"] == "succeeded"


def test_get_with_wait_answers_once_the_job_has_ended_or_as_it_stands_when_the_wait_runs_out(
    client: httpx.Client,
) -> None:
    question = unique("slow [lm:delay_s=1.5]")
    job_id = client.post("/jobs", json={"question": question}).json()["id"]

    early = client.get(f"/jobs/{job_id}", params={"wait": 0.2})
    finished = client.get(f"/jobs/{job_id}", params={"wait": 20})
    too_long = client.get(f"/jobs/{job_id}", params={"wait": 10_000})

    assert early.status_code == 200 and early.json()["status"] in ("queued", "running")
    assert finished.status_code == 200 and finished.json()["status"] == "succeeded"
    assert finished.json()["result"] == expected_result(question)
    assert too_long.status_code == 422


def test_unknown_job_is_404(client: httpx.Client) -> None:
    response = client.get(f"/jobs/{uuid.uuid4().hex}")

    assert response.status_code == 404
    assert "no job with id" in response.json()["detail"]


def test_per_request_model_and_temperature_reach_the_lm(
    client: httpx.Client, lm_requests: Callable[[str], list[dict[str, object]]]
) -> None:
    question = unique("Which model answers this?")
    job = client.post(
        "/jobs", params={"wait": 20}, json={"question": question, "model": OTHER_MODEL, "temperature": 0.7}
    ).json()

    assert job["status"] == "succeeded", job
    assert job["model"] == OTHER_MODEL and job["temperature"] == 0.7
    [sent] = lm_requests(question)
    assert sent["model"] == OTHER_MODEL.removeprefix("openai/")
    assert sent["temperature"] == 0.7


def test_every_lm_request_carries_the_token_limit_and_completion_marker(
    client: httpx.Client, lm_requests: Callable[[str], list[dict[str, object]]]
) -> None:
    question = unique("Does the token limit reach the server?")
    assert client.post("/jobs", params={"wait": 20}, json={"question": question}).json()["status"] == "succeeded"

    [sent] = lm_requests(question)
    assert sent["model"] == "simulated" and sent["temperature"] == 0.0
    # DSPy's native engine sends the newer name, which llama.cpp's server reads too.
    assert sent["max_completion_tokens"] == 384 or sent["max_tokens"] == 384
    assert sent["stop"] == ["[[ ## completed ## ]]"]


def test_unparseable_lm_output_fails_the_job_with_a_clear_error(client: httpx.Client) -> None:
    job = client.post("/jobs", params={"wait": 20}, json={"question": unique("[lm:garbage]")}).json()

    assert job["status"] == "failed"
    assert job["error"]["type"] == "AdapterParseError"
    assert job["error"]["retryable"] is False
    assert job["error"]["code"] == 422
    assert job["attempts"] == 1, "unparseable output is not retried"
    assert job["result"] is None


INVALID_BODIES = {
    "missing question": ({}, "question"),
    "empty question": ({"question": ""}, "question"),
    "blank question": ({"question": "   \n"}, "question"),
    "oversized question": ({"question": "x" * 4001}, "question"),
    "question not a string": ({"question": 42}, "question"),
    "unknown field": ({"question": "hi", "colour": "blue"}, "colour"),
    "temperature too high": ({"question": "hi", "temperature": 5}, "temperature"),
    "model not allowed": ({"question": "hi", "model": "openai/gpt-4o"}, "model"),
}


@pytest.mark.parametrize("body,field", INVALID_BODIES.values(), ids=INVALID_BODIES.keys())
def test_invalid_input_is_422_naming_the_field_and_nothing_is_stored_or_enqueued(
    make_stack: Callable[[], Stack], body: dict[str, Any], field: str
) -> None:
    stack = make_stack()
    stack.start_api()  # no worker: anything enqueued would stay in the queue
    with stack.client() as client:
        response = client.post("/jobs", json=body)

    assert response.status_code == 422
    assert field in response.json()["message"]
    r = stack.redis()
    assert r.llen("interactive") == 0
    assert r.keys("dj:job:*") == []


def test_wait_beyond_the_server_bound_is_422(client: httpx.Client) -> None:
    response = client.post("/jobs", params={"wait": 10_000}, json={"question": "hi"})

    assert response.status_code == 422
    assert "wait" in response.json()["detail"]


def test_body_that_is_not_json_is_422(client: httpx.Client) -> None:
    response = client.post("/jobs", content=b"question=hi", headers={"content-type": "application/json"})

    assert response.status_code == 422


def test_a_job_is_enqueued_on_the_interactive_queue_only(make_stack: Callable[[], Stack]) -> None:
    stack = make_stack()
    stack.start_api()  # no worker, so the message stays where it was routed
    with stack.client() as client:
        assert client.post("/jobs", json={"question": "where do I go?"}).status_code == 202

    r = stack.redis()
    assert r.llen("interactive") == 1
    assert r.llen("bulk") == 0
