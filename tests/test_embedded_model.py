"""End to end on the real embedded model: Gemma 3 270M behind llama-cpp-python.

Slow (the model writes about 30 tokens/s on 2 cores) and not deterministic
the way the scripted LM is, so it checks what must hold for any question:
the job succeeds and every output field is parsed into its type.
"""

import json
from collections.abc import Iterator

import httpx
import pytest

from core.settings import EMBEDDED_LM_MODEL
from harness.processes import Proc, free_port, python_module, wait_for
from harness.sse_client import read_events
from tests.conftest import Stack, private_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def embedded_lm() -> Iterator[str]:
    port = free_port()
    proc = Proc("embedded-lm", python_module("stack.embedded_lm", "--port", str(port)), {})
    base = f"http://127.0.0.1:{port}/v1"
    wait_for(lambda: httpx.get(f"{base}/models").status_code == 200, 180, "the embedded LM server", proc)
    yield base
    proc.stop()


@pytest.fixture(scope="module")
def embedded_stack(embedded_lm: str) -> Iterator[Stack]:
    """A worker and the API on the embedded model."""
    stack = private_stack(embedded_lm)
    stack.model = EMBEDDED_LM_MODEL
    stack.start_worker()
    stack.start_api()
    yield stack
    stack.stop()


def test_a_question_comes_back_succeeded_with_every_field_parsed(embedded_stack: Stack) -> None:
    with embedded_stack.client() as client:
        response = client.post(
            "/jobs", params={"wait": 60}, json={"question": "What is the capital of Japan?"}, timeout=90
        )

    job = response.json()
    assert response.status_code == 200, job
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert isinstance(result["reasoning"], str) and result["reasoning"].strip()
    assert isinstance(result["answer"], str) and result["answer"].strip()
    assert isinstance(result["key_concepts"], list) and all(isinstance(c, str) for c in result["key_concepts"])
    assert result["question_type"] in ("factual", "opinion", "analytical")
    assert job["usage"]["completion_tokens"] > 0


def test_the_embedded_server_honours_max_completion_tokens(embedded_lm: str) -> None:
    """llama.cpp reads only `max_tokens`; without the shim a base model writes to its context limit."""
    body = {
        "model": "gemma-3-270m",
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "max_completion_tokens": 7,
    }
    response = httpx.post(f"{embedded_lm}/chat/completions", json=body, timeout=120).json()

    assert response["usage"]["completion_tokens"] == 7
    assert response["choices"][0]["finish_reason"] == "length"


def test_a_triage_ticket_comes_back_typed_from_the_shipped_artifact(embedded_stack: Stack) -> None:
    ticket = "The mobile app freezes on the login screen for all our staff; we cannot work."
    with embedded_stack.client() as client:
        response = client.post(
            "/programs/triage/jobs", params={"wait": 60}, json={"input": {"ticket": ticket}}, timeout=90
        )
        version = client.get("/programs/triage").json()["version"]

    job = response.json()
    assert response.status_code == 200, job
    assert job["status"] == "succeeded", job["error"]
    assert job["program_version"] == version
    result = job["result"]
    assert result["category"] in ("billing", "bug", "account", "feature_request", "other")
    assert isinstance(result["urgency"], int)
    assert isinstance(result["summary"], str) and result["summary"].strip()


def test_a_streamed_answer_spells_the_result_without_the_json_around_it(embedded_stack: Stack) -> None:
    """The embedded model writes one JSON object (JSONAdapter); a client watching sees each field's text."""
    with embedded_stack.client() as client:
        job_id = client.post("/jobs", json={"question": "What is the capital of Italy?"}).json()["id"]
        received = read_events(client, job_id)

    job = received.terminal["data"]
    assert job["status"] == "succeeded", job["error"]
    text = received.text()
    assert text["reasoning"] == job["result"]["reasoning"]
    assert text["answer"] == job["result"]["answer"]
    assert text["question_type"] == job["result"]["question_type"]
    assert json.loads(text["key_concepts"]) == job["result"]["key_concepts"]
