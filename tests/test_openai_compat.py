"""The OpenAI-compatible chat endpoint and MLflow's `/invocations`, through the `openai` package and httpx,
against a real stack (scripted LM): the answers are the jobs' results, streams spell them, errors are OpenAI's.

Most tests use the shared open stack; keys, a program of several inputs, an unservable program and the wait
bound get a stack of their own (API_KEYS, the test suite's `extractor` program, WAIT_MAX_S=3), and a program
served from MLflow another, with an MLflow server of its own.
"""

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from api.auth import owner_id
from core import keys
from harness.mlflow_server import QUIET_ENV, start_mlflow_server
from harness.processes import ROOT, wait_for
from tests.conftest import Stack, private_stack
from tests.test_jobs import expected_result, unique, wait_finished
from tests.test_mlflow_programs import mlflow_env
from tests.test_programs import build_artifact, registry
from tests.test_programs import expected_result as extractor_result

pytestmark = pytest.mark.e2e

KEY = f"dj_openai_{uuid.uuid4().hex}"


def answer_of(question: str) -> str:
    return str(expected_result(question)["answer"])


def job_id_of(completion_id: str) -> str:
    assert completion_id.startswith("chatcmpl-"), completion_id
    return completion_id.removeprefix("chatcmpl-")


@pytest.fixture
def chat(stack: Stack) -> Iterator[OpenAI]:
    with OpenAI(base_url=stack.api_url + "/v1", api_key="unused") as client:
        yield client


def test_a_chat_completion_of_qa_answers_the_answer_text(chat: OpenAI, client: httpx.Client) -> None:
    question = unique("What is the capital of France?")
    completion = chat.chat.completions.create(
        model="qa",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
    )

    assert completion.object == "chat.completion"
    assert completion.model == "qa"
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == answer_of(question)
    assert choice.finish_reason == "stop"
    # It ran as an ordinary job, readable where every job is.
    job = client.get(f"/jobs/{job_id_of(completion.id)}").json()
    assert job["status"] == "succeeded" and job["program"] == "qa"
    assert job["input"] == {"question": question}
    assert job["result"] == expected_result(question)
    assert completion.usage is not None
    assert completion.usage.model_dump() == {
        **job["usage"],
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
    }
    assert completion.usage.total_tokens > 0


def test_streamed_chunks_join_to_the_jobs_final_answer(chat: OpenAI, client: httpx.Client) -> None:
    question = unique("Why do cats purr? [lm:tps=100]")
    chunks = list(
        chat.chat.completions.create(
            model="qa",
            messages=[{"role": "user", "content": question}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 1, "the answer streams in pieces, not at the end"
    job = client.get(f"/jobs/{job_id_of(chunks[0].id)}").json()
    assert "".join(content) == job["result"]["answer"] == answer_of(question)
    *_, finish, usage = chunks
    assert finish.choices[0].finish_reason == "stop"
    assert usage.choices == [] and usage.usage is not None and usage.usage.total_tokens == job["usage"]["total_tokens"]
    assert {c.id for c in chunks} == {chunks[0].id}


def test_a_job_retried_before_it_wrote_streams_its_answer_once(chat: OpenAI, client: httpx.Client) -> None:
    question = unique("[lm:fail_times=1,status=500] retried [lm:tps=100]")
    stream = chat.chat.completions.create(model="qa", messages=[{"role": "user", "content": question}], stream=True)
    chunks = list(stream)

    job = client.get(f"/jobs/{job_id_of(chunks[0].id)}").json()
    assert job["attempts"] == 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer_of(question)


def test_a_job_that_fails_after_part_of_its_answer_never_repeats_a_piece(chat: OpenAI, client: httpx.Client) -> None:
    """Every attempt drops its LM connection halfway through the answer; each retry writes the same text
    again, which the client must not see twice, and the stream ends with the job's error."""
    question = unique("[lm:drop] dropped [lm:tps=200]")
    received: list[str] = []
    with pytest.raises(openai.APIError) as failed:
        for chunk in chat.chat.completions.create(
            model="qa", messages=[{"role": "user", "content": question}], stream=True
        ):
            received.append(chunk.choices[0].delta.content or "")

    body = failed.value.body
    assert isinstance(body, dict)
    job = wait_finished(client, body["job_id"])
    assert job["status"] == "failed" and job["attempts"] > 1, job
    assert body["code"] == job["error"]["type"]
    assert answer_of(question).startswith("".join(received))


def test_triage_takes_json_content_and_answers_its_prediction_as_json(chat: OpenAI, client: httpx.Client) -> None:
    ticket = unique("I was charged twice for my subscription")
    completion = chat.chat.completions.create(
        model="triage", messages=[{"role": "user", "content": json.dumps({"ticket": ticket})}]
    )

    content = completion.choices[0].message.content
    assert content is not None
    prediction = json.loads(content)
    job = client.get(f"/jobs/{job_id_of(completion.id)}").json()
    assert job["input"] == {"ticket": ticket}
    assert prediction == job["result"] == {"category": "billing", "urgency": 3, "summary": f"summary for {ticket}"}


def test_triage_takes_plain_text_too_and_streams_its_json_whole(chat: OpenAI) -> None:
    ticket = unique("The app crashes when I log in")
    chunks = list(
        chat.chat.completions.create(model="triage", messages=[{"role": "user", "content": ticket}], stream=True)
    )

    content = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(content) == 1
    assert json.loads(content[0])["summary"] == f"summary for {ticket}"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_response_format_json_object_answers_qa_in_json(chat: OpenAI) -> None:
    question = unique("Which is bigger, 3 or 4?")
    completion = chat.chat.completions.create(
        model="qa", messages=[{"role": "user", "content": question}], response_format={"type": "json_object"}
    )

    assert json.loads(completion.choices[0].message.content or "") == expected_result(question)


@pytest.mark.parametrize(
    "messages,param",
    [
        ([{"role": "user", "content": "   "}], "messages[0].content"),
        ([{"role": "system", "content": "no question at all"}], "messages"),
        ([{"role": "user", "content": "x" * 4001}], "messages[0].content"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://a/b.png"}}]}],
            "messages[0].content",
        ),
        ([], "messages"),
        ([{"role": "robot", "content": "hi"}], "messages.0.role"),
    ],
    ids=["blank", "no user message", "too long", "an image", "no messages", "an unknown role"],
)
def test_a_message_the_program_cannot_take_is_a_bad_request(chat: OpenAI, messages: list[Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        chat.chat.completions.create(model="qa", messages=messages)

    assert refused.value.status_code == 400
    assert refused.value.body == {
        "message": refused.value.body["message"],  # type: ignore[index]
        "type": "invalid_request_error",
        "param": param,
        "code": "invalid_request",
    }


def test_an_unknown_model_is_not_found(chat: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        chat.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])

    assert isinstance(missing.value.body, dict)
    assert missing.value.body["code"] == "model_not_found" and missing.value.body["param"] == "model"
    assert "qa" in missing.value.body["message"]


def test_a_failed_job_is_its_error_code_and_the_client_does_not_submit_it_again(
    chat: OpenAI, lm_requests: Callable[[str], list[dict[str, object]]]
) -> None:
    question = unique("[lm:garbage]")
    with pytest.raises(openai.UnprocessableEntityError) as failed:
        chat.chat.completions.create(model="qa", messages=[{"role": "user", "content": question}])

    assert isinstance(failed.value.body, dict)
    assert failed.value.body["code"] == "AdapterParseError"
    assert failed.value.body["job_id"]
    assert failed.value.response.headers["x-should-retry"] == "false"
    assert len(lm_requests(question)) == 1, "one job, one LM call: nobody retried the request"


def test_the_same_idempotency_key_answers_the_same_job(chat: OpenAI) -> None:
    question = unique("Asked twice?")
    key = {"Idempotency-Key": uuid.uuid4().hex}
    messages: Any = [{"role": "user", "content": question}]
    first = chat.chat.completions.with_raw_response.create(model="qa", messages=messages, extra_headers=key)
    again = chat.chat.completions.with_raw_response.create(model="qa", messages=messages, extra_headers=key)

    assert first.parse().id == again.parse().id
    assert again.headers["idempotent-replayed"] == "true"
    assert first.headers["location"] == f"/jobs/{job_id_of(first.parse().id)}"


def test_models_lists_the_programs(chat: OpenAI) -> None:
    models = {m.id: m for m in chat.models.list()}

    assert {"qa", "triage"} <= set(models)
    assert models["qa"].object == "model" and models["qa"].owned_by == "dspy-jobs"
    assert models["qa"].created > 0  # when its artifact was built
    assert chat.models.retrieve("triage").id == "triage"
    with pytest.raises(openai.NotFoundError):
        chat.models.retrieve("nothing-here")


def test_the_models_route_of_lm_capacity_is_unchanged(client: httpx.Client) -> None:
    assert "models" in client.get("/models").json()


def test_invocations_answers_mlflow_callers_with_the_prediction_as_json(client: httpx.Client) -> None:
    question = unique("Who wrote Hamlet?")
    response = client.post("/invocations", json={"messages": [{"role": "user", "content": question}]})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "qa"
    assert json.loads(body["choices"][0]["message"]["content"]) == expected_result(question)
    assert body["choices"][0]["finish_reason"] == "stop"


def test_invocations_selects_a_program_by_its_params(client: httpx.Client) -> None:
    ticket = unique("Please add dark mode")
    response = client.post(
        "/invocations",
        json={"messages": [{"role": "user", "content": ticket}], "params": {"program": "triage"}, "max_tokens": 50},
    )

    assert response.status_code == 200, response.text
    assert json.loads(response.json()["choices"][0]["message"]["content"])["summary"] == f"summary for {ticket}"
    conflict = client.post(
        "/invocations",
        json={"messages": [{"role": "user", "content": "x"}], "model": "qa", "params": {"program": "triage"}},
    )
    assert conflict.status_code == 400 and conflict.json()["error"]["param"] == "model"


def test_our_other_routes_keep_their_error_shape(client: httpx.Client) -> None:
    openai_shaped = client.post("/v1/chat/completions", json={"model": "qa"})
    ours = client.post("/jobs", json={})
    unknown = client.get("/v1/nowhere")

    assert openai_shaped.status_code == 400 and openai_shaped.json()["error"]["param"] == "messages"
    assert ours.status_code == 422 and set(ours.json()) == {"message", "detail"}
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


# --- A stack with keys, a program of several inputs, one that cannot be served, and a short wait bound ---


@pytest.fixture(scope="module")
def keyed(lm_api_base: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    artifacts: Path = tmp_path_factory.mktemp("openai-artifacts")
    stack = private_stack(lm_api_base, "redis-openai")
    stack.extra_env = {
        "API_KEYS": hashlib.sha256(KEY.encode()).hexdigest(),
        "PROGRAMS": json.dumps(registry(artifacts)),
        "WAIT_MAX_S": "3",
        "KEY_MAX_SSE_STREAMS": "2",
    }
    build_artifact(stack)
    stack.start_worker(name="worker-openai")
    stack.start_api()
    yield stack
    stack.stop()


@pytest.fixture
def keyed_chat(keyed: Stack) -> Iterator[OpenAI]:
    with OpenAI(base_url=keyed.api_url + "/v1", api_key=KEY) as client:
        yield client


def test_the_api_key_works_as_the_openai_api_key_and_a_wrong_one_is_401(keyed: Stack, keyed_chat: OpenAI) -> None:
    question = unique("Am I let in?")
    completion = keyed_chat.chat.completions.create(model="qa", messages=[{"role": "user", "content": question}])
    assert completion.choices[0].message.content == answer_of(question)

    with (
        OpenAI(base_url=keyed.api_url + "/v1", api_key="sk-wrong") as wrong,
        pytest.raises(openai.AuthenticationError) as refused,
    ):
        wrong.models.list()
    assert refused.value.status_code == 401
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "invalid_api_key"
    # Our own routes keep our shape for the same refusal.
    assert set(httpx.get(f"{keyed.api_url}/jobs/x", headers={"Authorization": "Bearer sk-wrong"}).json()) == {
        "message",
        "detail",
    }


def test_a_program_of_several_inputs_takes_them_as_a_json_object(keyed_chat: OpenAI) -> None:
    note = unique("a red car")
    content = json.dumps({"note": note, "priority": 2, "labels": ["cars"]})
    completion = keyed_chat.chat.completions.create(model="extractor", messages=[{"role": "user", "content": content}])

    assert json.loads(completion.choices[0].message.content or "") == extractor_result(note)


@pytest.mark.parametrize(
    "content,named",
    [
        ("a red car", "JSON object"),
        ('{"note": "a red car", "labels": []}', "priority"),
        ('{"note": "a red car", "priority": "high", "labels": []}', "priority"),
        ('{"note": "a red car", "priority": 1, "labels": [], "colour": "red"}', "colour"),
    ],
    ids=["not json", "a field missing", "a field mistyped", "an unknown field"],
)
def test_content_that_is_not_the_programs_input_is_a_bad_request(
    keyed: Stack, keyed_chat: OpenAI, content: str, named: str
) -> None:
    jobs_before = len(keyed.redis().keys("dj:job:*"))
    with pytest.raises(openai.BadRequestError) as refused:
        keyed_chat.chat.completions.create(model="extractor", messages=[{"role": "user", "content": content}])

    assert isinstance(refused.value.body, dict)
    assert refused.value.body["param"] == "messages[0].content"
    assert named in refused.value.body["message"]
    assert len(keyed.redis().keys("dj:job:*")) == jobs_before, "nothing is stored"


def test_a_program_that_cannot_be_served_is_503_with_the_reason(keyed_chat: OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as refused:
        keyed_chat.with_options(max_retries=0).chat.completions.create(
            model="never-built", messages=[{"role": "user", "content": "{}"}]
        )

    assert refused.value.status_code == 503
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["code"] == "model_unavailable" and "nothing.json" in refused.value.body["message"]


def test_a_job_longer_than_the_wait_bound_is_504_with_its_id_and_goes_on(
    keyed: Stack, keyed_chat: OpenAI, lm_requests: Callable[[str], list[dict[str, object]]]
) -> None:
    question = unique("slow [lm:delay_s=8]")
    with pytest.raises(openai.InternalServerError) as waited:
        keyed_chat.chat.completions.create(model="qa", messages=[{"role": "user", "content": question}])

    assert waited.value.status_code == 504
    assert isinstance(waited.value.body, dict) and waited.value.body["code"] == "timeout"
    with httpx.Client(base_url=keyed.api_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as client:
        job = wait_finished(client, waited.value.body["job_id"])
    assert job["status"] == "succeeded" and job["result"]["answer"] == answer_of(question)
    assert len(lm_requests(question)) == 1, "the client did not submit it again"


def test_a_body_over_the_limit_is_413_in_openais_shape(keyed: Stack) -> None:
    response = httpx.post(
        f"{keyed.api_url}/v1/chat/completions",
        content=b"x" * (2 * 1024 * 1024),
        headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def open_streams(keyed: Stack) -> int:
    return int(keyed.redis().zcard(keys.sse_streams(owner_id(hashlib.sha256(KEY.encode()).digest()))))


def test_a_stream_holds_one_of_the_keys_slots_and_a_stream_over_the_limit_leaves_no_job(
    keyed: Stack, keyed_chat: OpenAI
) -> None:
    body = {"model": "qa", "messages": [{"role": "user", "content": unique("hold on [lm:tps=10]")}], "stream": True}
    with httpx.Client(base_url=keyed.api_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as client:
        with (
            client.stream("POST", "/v1/chat/completions", json=body) as one,
            client.stream(
                "POST",
                "/v1/chat/completions",
                json=body | {"messages": [{"role": "user", "content": unique("too [lm:tps=10]")}]},
            ) as two,
        ):
            assert one.status_code == two.status_code == 200
            assert one.headers["content-type"].startswith("text/event-stream")
            lines = one.iter_lines()  # kept: a dropped iterator closes its connection
            job_id = job_id_of(json.loads(next(lines).removeprefix("data: "))["id"])
            assert open_streams(keyed) == 2
            jobs_before = len(keyed.redis().keys("dj:job:*"))
            with pytest.raises(openai.RateLimitError):
                keyed_chat.with_options(max_retries=0).chat.completions.create(
                    model="qa", messages=[{"role": "user", "content": unique("a third")}], stream=True
                )
            assert len(keyed.redis().keys("dj:job:*")) == jobs_before, "a refused stream leaves no job behind"
        # The clients went away mid-stream: their slots are freed, their jobs go on.
        assert wait_finished(client, job_id)["status"] == "succeeded"
    deadline = time.monotonic() + 10
    while open_streams(keyed) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_streams(keyed) == 0


# --- A program served from MLflow: what `mlflow models serve` callers move over ---


@pytest.fixture(scope="module")
def from_mlflow(lm_api_base: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """qa logged and registered in an MLflow server of this module's own (logging moves the registry's alias,
    which other modules' servers must not see), served by URI alone."""
    server, tracking_uri = start_mlflow_server(tmp_path_factory.mktemp("openai-mlflow"), "mlflow-openai")
    stack = private_stack(lm_api_base, "redis-openai-mlflow")
    stack.procs.append(server)
    try:
        logged = subprocess.run(
            [sys.executable, "-m", "tests.programs.log_to_mlflow", tracking_uri],
            cwd=ROOT,
            env={**os.environ, **QUIET_ENV},
            capture_output=True,
            text=True,
        )
        assert logged.returncode == 0, logged.stderr[-3000:]
        programs = {
            "qa-logged": {"mlflow_uri": "models:/qa-logged@production"},
            "no-such-model": {"mlflow_uri": "models:/no-such-model@production"},
        }
        stack.extra_env = mlflow_env(tracking_uri, programs)
        stack.start_worker(name="worker-openai-mlflow")
        stack.start_api()
        with stack.client() as client:
            wait_for(lambda: client.get("/programs/qa-logged").json()["available"], 60, "qa-logged served")
        yield stack
    finally:
        stack.stop()


def test_a_program_served_from_mlflow_answers_chat_and_invocations(from_mlflow: Stack) -> None:
    question = unique("Where is the Louvre?")
    with OpenAI(base_url=from_mlflow.api_url + "/v1", api_key="unused") as chat:
        assert "qa-logged" in {m.id for m in chat.models.list()}
        completion = chat.chat.completions.create(model="qa-logged", messages=[{"role": "user", "content": question}])
        assert completion.choices[0].message.content == answer_of(question)
        with pytest.raises(openai.InternalServerError) as unavailable:
            chat.with_options(max_retries=0).chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": question}]
            )
    assert isinstance(unavailable.value.body, dict) and unavailable.value.body["code"] == "model_unavailable"

    with from_mlflow.client() as client:
        response = client.post(
            "/invocations",
            json={"messages": [{"role": "user", "content": question}], "params": {"program": "qa-logged"}},
        )
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == expected_result(question)
