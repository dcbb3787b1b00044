"""End to end on the real embedded model: Gemma 3 270M behind llama.cpp's server (stack/embedded_lm.py).

Slow (a few seconds a question on 2 cores) and not deterministic the way
the scripted LM is, so it checks what must hold for any question: the job
succeeds and every output field is parsed into its type; a batch leaves an
interactive job a slot; a streamed call given up on frees its slot on the server.
"""

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from core.capacity import limits_for
from core.settings import EMBEDDED_LM_MODEL, Settings
from harness.processes import start_embedded_lm, wait_for
from harness.sse_client import read_events
from program.lm import build_adapter
from tests.conftest import Stack, private_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def embedded_lm() -> Iterator[str]:
    """The server as `make up` starts it: the settings' slots and threads."""
    proc, base = start_embedded_lm()
    yield base
    proc.stop()


@pytest.fixture(scope="module")
def embedded_stack(embedded_lm: str) -> Iterator[Stack]:
    """An interactive worker, a bulk worker and the API on the embedded model."""
    stack = private_stack(embedded_lm)
    stack.model = EMBEDDED_LM_MODEL
    stack.start_services()
    yield stack
    stack.stop()


def busy_slots(lm_base: str) -> list[dict[str, Any]]:
    """The server's slots that are generating now (llama.cpp's /slots)."""
    slots: list[dict[str, Any]] = httpx.get(f"{lm_base.removesuffix('/v1')}/slots", timeout=5).json()
    return [slot for slot in slots if slot["is_processing"]]


def finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """The job once it has ended (longer than `?wait` may wait, on a machine this slow)."""
    ended = ("succeeded", "failed", "cancelled", "expired")
    wait_for(lambda: client.get(f"/jobs/{job_id}").json()["status"] in ended, 180, f"job {job_id} to end")
    job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
    return job


def default_model(client: httpx.Client) -> dict[str, Any]:
    model: dict[str, Any] = next(m for m in client.get("/models").json()["models"] if m["default"])
    return model


def test_a_question_comes_back_succeeded_with_every_field_parsed(embedded_stack: Stack) -> None:
    with embedded_stack.client() as client:
        response = client.post("/jobs", json={"question": "What is the capital of Japan?"})
        job = finished(client, response.json()["id"])

    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert isinstance(result["reasoning"], str) and result["reasoning"].strip()
    assert isinstance(result["answer"], str) and result["answer"].strip()
    assert isinstance(result["key_concepts"], list) and all(isinstance(c, str) for c in result["key_concepts"])
    assert result["question_type"] in ("factual", "opinion", "analytical")
    assert job["usage"]["completion_tokens"] > 0


def test_the_embedded_server_honours_max_completion_tokens(embedded_lm: str) -> None:
    """What current OpenAI clients send (DSPy's native engine among them); without it the base model writes to
    its context limit."""
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


def test_the_server_runs_the_slots_the_settings_give_the_workers(embedded_lm: str) -> None:
    props = httpx.get(f"{embedded_lm.removesuffix('/v1')}/props", timeout=5).json()

    assert props["total_slots"] == Settings().embedded_lm_slots == limits_for(Settings()).max_in_flight


def test_dspys_instructions_and_demos_reach_the_model_before_the_question(embedded_lm: str) -> None:
    """The prompt llama.cpp builds from a DSPy call: the system message, where DSPy puts the instructions, is
    in it (llama-cpp-python's gemma format dropped it)."""
    from core.programs import parse_artifact
    from program.registry import program_specs

    settings = Settings(lm_api_base=embedded_lm)
    spec = program_specs(settings)["qa"]
    module = spec.build()
    module.load_state(parse_artifact(spec.name, spec.artifact, spec.artifact.read_bytes())[0])
    [(_, predictor)] = module.named_predictors()
    question = "What is the tallest mountain on Earth?"
    messages = build_adapter(settings).format(predictor.signature, predictor.demos, {"question": question})
    assert messages[0]["role"] == "system"

    server = embedded_lm.removesuffix("/v1")
    prompt = httpx.post(f"{server}/apply-template", json={"messages": messages}, timeout=30).json()["prompt"]

    instructions = str(predictor.signature.instructions).strip()
    assert instructions in prompt
    assert prompt.index(instructions) < prompt.index(predictor.demos[0]["question"]) < prompt.index(question)


def test_an_interactive_job_finds_a_slot_free_while_a_batch_fills_the_rest(embedded_stack: Stack) -> None:
    limits = limits_for(Settings())
    items = [{"question": f"What is {n} plus {n}?"} for n in range(1, 2 * limits.bulk_max_in_flight + 1)]
    with embedded_stack.client() as client:
        batch_id = client.post("/batches", json={"items": items}).json()["id"]
        wait_for(
            lambda: default_model(client)["in_flight"] == limits.bulk_max_in_flight,
            120,
            "the batch to hold every slot bulk may hold",
        )
        job = finished(client, client.post("/jobs", json={"question": "What is the capital of Spain?"}).json()["id"])
        wait_for(lambda: client.get(f"/batches/{batch_id}").json()["status"] == "completed", 300, "the batch")
        results = client.get(f"/batches/{batch_id}/results", params={"limit": 1000}).json()["items"]

    assert job["status"] == "succeeded", job["error"]
    # Granted at once: it never waited for a batch item's call to end.
    assert job["capacity_wait_s"] == 0
    errors = [item["error"] for item in results if item["error"]]
    # The base model may write an answer that does not parse; nothing else may fail, above all no timeout.
    assert all(error["type"] == "AdapterParseError" for error in errors), errors


def test_a_cancelled_streaming_job_gives_its_slot_back_on_the_server_at_once(embedded_stack: Stack) -> None:
    """The worker stops at the job's next token and closes the stream; the server stops generating."""
    lm_base = embedded_stack.lm_api_base
    with embedded_stack.client() as client:
        job_id = client.post("/jobs", json={"question": "Why do leaves change colour in autumn?"}).json()["id"]
        # Cancelled once it writes: llama.cpp does not interrupt a prompt's prefill, which on a cold server
        # (no prefix cached yet) takes seconds.
        with connect_sse(client, "GET", f"/jobs/{job_id}/events") as source:
            next(sse for sse in source.iter_sse() if sse.event == "token")
        assert len(busy_slots(lm_base)) == 1
        assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
        # The server notices the closed connection within its polling interval (a second): then nothing runs.
        wait_for(lambda: not busy_slots(lm_base) and default_model(client)["in_flight"] == 0, 5, "a free slot")
        job = client.get(f"/jobs/{job_id}").json()
        after = finished(client, client.post("/jobs", json={"question": "What is the capital of Japan?"}).json()["id"])

    assert job["status"] == "cancelled"
    assert after["status"] == "succeeded", after["error"]


def test_a_stream_its_client_closes_stops_generating_on_the_server(embedded_lm: str) -> None:
    """What a timed-out or cancelled streaming call does: its slot is free before the answer would have ended,
    so a retry does not queue behind its own abandoned twin."""
    body = {
        "model": "gemma-3-270m",
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "max_tokens": 3000,
        "stream": True,
    }
    with httpx.stream("POST", f"{embedded_lm}/chat/completions", json=body, timeout=60) as response:
        chunks = response.iter_lines()
        assert any(line.startswith("data: ") for line in chunks)
        assert len(busy_slots(embedded_lm)) == 1

    wait_for(lambda: not busy_slots(embedded_lm), 5, "the abandoned stream's slot to be free")
