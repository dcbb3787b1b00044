"""Programs from MLflow: a DSPy program logged and registered in a real MLflow tracking server, served.

The server is `mlflow server` on loopback (harness/mlflow_server.py); the
programs are logged by a script as a user would (tests/programs/log_to_mlflow.py):
the shipped `qa` program, version 1 as MLflow's pickle and version 2, other
instructions and one demo, in dspy's own form, both with an LM of the
logger's own that points nowhere. The stack's registry names them by URI
only (`PROGRAMS`); the workers load them, the API takes their schemas from
what the workers publish.
"""

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from core.mlflow_uris import parse_mlflow_uri
from core.settings import Settings
from harness.mlflow_server import QUIET_ENV
from harness.processes import ROOT, free_port, wait_for
from harness.sse_client import read_events
from tests.conftest import Stack, private_stack
from tests.test_jobs import expected_result, wait_finished

pytestmark = pytest.mark.e2e

MODEL = "qa-logged"
TRACES = "dspy-jobs-test-traces"


def unique(question: str) -> str:
    return f"{question} ({uuid.uuid4().hex[:8]})"


def set_alias(tracking_uri: str, model: str, alias: str, version: str) -> None:
    """What `MlflowClient().set_registered_model_alias` sends."""
    response = httpx.post(
        f"{tracking_uri}/api/2.0/mlflow/registered-models/alias",
        json={"name": model, "alias": alias, "version": version},
    )
    response.raise_for_status()


@pytest.fixture(scope="module")
def logged(mlflow_tracking_uri: str) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.programs.log_to_mlflow", mlflow_tracking_uri],
        cwd=ROOT,
        env={**os.environ, **QUIET_ENV},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def mlflow_env(tracking_uri: str, programs: dict[str, Any], tracing: bool = False) -> dict[str, str]:
    return {
        "PROGRAMS": json.dumps(programs),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
        "MLFLOW_REFRESH_S": "0.5",
        **({"MLFLOW_TRACING": "true", "MLFLOW_TRACING_EXPERIMENT": TRACES} if tracing else {}),
        **QUIET_ENV,
    }


@pytest.fixture(scope="module")
def mlflow_stack(lm_api_base: str, mlflow_tracking_uri: str, logged: dict[str, str]) -> Iterator[Stack]:
    stack = private_stack(lm_api_base, "redis-mlflow")
    stack.extra_env = mlflow_env(
        mlflow_tracking_uri,
        {
            "qa-logged": {"mlflow_uri": f"models:/{MODEL}@production"},
            # With `module`, the logged program must have that module's fields.
            "qa-run": {"mlflow_uri": f"runs:/{logged['run_id']}/qa", "module": "program.qa:QA"},
            "no-such-model": {"mlflow_uri": "models:/no-such-model@production"},
            "not-dspy": {"mlflow_uri": "models:/not-dspy/1"},
        },
        tracing=True,
    )
    stack.start_services()
    yield stack
    stack.stop()


@pytest.fixture
def api(mlflow_stack: Stack) -> Iterator[httpx.Client]:
    with mlflow_stack.client() as c:
        yield c


def test_a_job_of_a_program_logged_in_mlflow_comes_back_typed_and_names_the_model_version(
    api: httpx.Client, lm_requests: Callable[[str], list[dict[str, object]]]
) -> None:
    question = unique("What is the capital of France?")

    response = api.post("/programs/qa-logged/jobs", params={"wait": 30}, json={"input": {"question": question}})

    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded", job
    assert job["program"] == "qa-logged"
    assert job["program_version"] == f"models:/{MODEL}/1"
    assert job["result"] == expected_result(question)
    assert isinstance(job["result"]["key_concepts"], list)
    # The worker's LM, not the one the program was logged with (which points nowhere).
    assert [r["model"] for r in lm_requests(question)] == ["simulated"]


def test_the_job_of_the_mlflow_program_streams_its_fields_as_token_events(api: httpx.Client) -> None:
    question = unique("Stream me from MLflow [lm:tps=200]")
    submitted = api.post("/programs/qa-logged/jobs", json={"input": {"question": question}})
    assert submitted.status_code == 202, submitted.text

    received = read_events(api, submitted.json()["id"])

    assert received.terminal["type"] == "result"
    assert received.text()["answer"] == f"The answer to '{question}' is 42."
    answer_tokens = [e for e in received.events if e["type"] == "token" and e["data"]["field"] == "answer"]
    assert len(answer_tokens) > 1, "a text field streams in more than one piece"
    assert wait_finished(api, submitted.json()["id"])["program_version"] == f"models:/{MODEL}/1"


def test_a_batch_of_the_mlflow_program_runs_every_item_typed(api: httpx.Client) -> None:
    questions = [unique(f"Batch question {i}") for i in range(3)]
    items = [{"input": {"question": q}, "custom_id": f"row-{i}"} for i, q in enumerate(questions)]

    response = api.post("/programs/qa-logged/batches", json={"items": items})

    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]
    assert response.json()["program"] == "qa-logged"
    wait_for(lambda: api.get(f"/batches/{batch_id}").json()["status"] == "completed", 60, "the batch")
    results = api.get(f"/batches/{batch_id}/results").json()["items"]
    assert [r["custom_id"] for r in results] == ["row-0", "row-1", "row-2"]
    assert [r["result"] for r in results] == [expected_result(q) for q in questions]
    assert api.get(f"/jobs/{results[0]['id']}").json()["program_version"] == f"models:/{MODEL}/1"


@pytest.mark.parametrize(
    ("path", "payload", "names"),
    [
        ("jobs", {"input": {}}, "input.question"),
        ("jobs", {"input": {"question": "x", "context": "y"}}, "input.context"),
        ("jobs", {"input": {"question": "   "}}, "input.question"),
        ("jobs", {"question": "flat, as /jobs takes it"}, "input"),
        ("batches", {"items": [{"input": {"question": 3}}]}, "items.0.input.question"),
    ],
)
def test_an_input_that_does_not_fit_the_logged_signature_is_422_naming_the_field(
    api: httpx.Client, mlflow_stack: Stack, path: str, payload: dict[str, Any], names: str
) -> None:
    before = mlflow_stack.redis().dbsize()

    response = api.post(f"/programs/qa-logged/{path}", json=payload)

    assert response.status_code == 422, response.text
    assert names in response.json()["message"]
    assert mlflow_stack.redis().dbsize() == before, "nothing may be stored for a refused input"


def test_programs_lists_the_mlflow_program_with_its_schemas_version_and_workers(
    api: httpx.Client, mlflow_stack: Stack, logged: dict[str, str]
) -> None:
    listed = {p["name"]: p for p in api.get("/programs").json()}

    program = listed["qa-logged"]
    assert program["available"] and program["problem"] is None
    assert program["version"] == f"models:/{MODEL}/1"
    assert program["module"] is None and program["artifact"] is None
    assert program["mlflow"]["uri"] == f"models:/{MODEL}@production"
    assert program["mlflow"]["registered_model"] == MODEL and program["mlflow"]["model_version"] == "1"
    assert program["mlflow"]["run_id"] == logged["run_id"]
    assert program["input_schema"]["required"] == ["question"]
    assert set(program["output_schema"]["properties"]) == {"reasoning", "answer", "key_concepts", "question_type"}
    assert program["output_schema"]["properties"]["question_type"]["enum"] == ["factual", "opinion", "analytical"]
    workers = {w["worker"]: w["version"] for w in program["workers"]}
    assert workers == {p.hostname: f"models:/{MODEL}/1" for p in mlflow_stack.procs if p.hostname}
    assert api.get("/programs/qa-logged").json()["version"] == program["version"]
    assert "/programs/qa-logged/jobs" in api.get("/openapi.json").json()["paths"]
    # One load per worker process, none per job.
    assert int(mlflow_stack.redis().hget("dj:program_loads", "qa-logged") or 0) == 2


def test_a_model_logged_in_a_run_is_served_by_its_runs_uri(api: httpx.Client, logged: dict[str, str]) -> None:
    question = unique("Who wrote Hamlet?")

    job = api.post("/programs/qa-run/jobs", params={"wait": 30}, json={"input": {"question": question}}).json()

    assert job["status"] == "succeeded", job
    assert job["program_version"] == f"runs:/{logged['run_id']}/qa"
    assert job["result"] == expected_result(question)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("no-such-model", "Registered Model with name=no-such-model not found"),
        ("not-dspy", "models:/not-dspy/1 is not a DSPy model (its flavors: python_function)"),
    ],
)
def test_a_uri_that_names_nothing_or_no_dspy_model_is_503_with_the_reason_while_the_others_keep_working(
    api: httpx.Client, mlflow_stack: Stack, name: str, reason: str
) -> None:
    for path, body in (("jobs", {"input": {"question": "x"}}), ("batches", {"items": [{"input": {"question": "x"}}]})):
        response = api.post(f"/programs/{name}/{path}", json=body)
        assert response.status_code == 503, response.text
        assert reason in response.json()["message"]

    listed = api.get(f"/programs/{name}").json()
    assert not listed["available"] and reason in listed["problem"]
    assert listed["version"] is None
    assert all(p.popen.poll() is None for p in mlflow_stack.procs), "no process may crash over it"
    for program in ("qa", "qa-logged"):
        job = api.post(f"/programs/{program}/jobs", params={"wait": 30}, json={"input": {"question": unique("Ok?")}})
        assert job.json()["status"] == "succeeded", job.text


@pytest.mark.parametrize(("program", "stream"), [("qa-logged", False), ("qa", True)])
def test_with_tracing_on_each_job_is_traced_to_mlflow_tagged_with_its_job_id(
    api: httpx.Client, mlflow_tracking_uri: str, program: str, stream: bool
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import RestException

    question = unique("Traced?")
    response = api.post(
        f"/programs/{program}/jobs", params={"wait": 30}, json={"input": {"question": question}, "stream": stream}
    )
    job = response.json()
    assert job["status"] == "succeeded", job
    assert job["trace_id"], "the record names its trace"
    assert api.get(f"/jobs/{job['id']}").json()["trace_id"] == job["trace_id"]

    client = MlflowClient(tracking_uri=mlflow_tracking_uri)

    def exported() -> bool:
        try:
            found = client.get_trace(job["trace_id"])
        except RestException:
            return False
        return found is not None and found.info.trace_metadata.get("mlflow.trace.infoFinalized") == "true"

    # MLflow exports traces in the background (its spans first, then its info): the job did not wait for it.
    wait_for(exported, 30, "the whole trace in MLflow")
    trace = client.get_trace(job["trace_id"])
    assert trace.info.tags["dspy_jobs.job_id"] == job["id"]
    assert trace.info.tags["dspy_jobs.program_version"] == job["program_version"]
    assert trace.info.client_request_id == job["id"]
    assert client.get_experiment(trace.info.experiment_id).name == TRACES
    spans = {span.name: span for span in trace.data.spans}
    assert spans[program].parent_id is None and spans[program].outputs["answer"] == job["result"]["answer"]
    assert {"QA.forward", "Predict.forward", "ChatAdapter.format", "ChatAdapter.parse"} <= set(spans)
    lm_spans = [span for span in trace.data.spans if span.span_type == "CHAT_MODEL"]
    assert len(lm_spans) == 1 and lm_spans[0].attributes["model"] == "openai/simulated"
    assert spans["QA.forward"].parent_id == spans[program].span_id


def test_loading_a_logged_program_never_configures_dspy_and_drops_the_loggers_lm(
    mlflow_tracking_uri: str, logged: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dspy

    from worker.mlflow_loader import MlflowLoader

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)  # the loader sets them; restored after the test
    loader = MlflowLoader(Settings(mlflow_tracking_uri=mlflow_tracking_uri, mlflow_allow_pickle_deserialization=True))
    configured_before = dspy.settings.lm

    for version in (logged["v1"], logged["v2"]):
        program = loader.load(loader.resolve(parse_mlflow_uri(f"models:/{MODEL}/{version}")))
        assert [predictor.lm for _, predictor in program.named_predictors()] == [None]

    assert dspy.settings.lm is configured_before, "loading must not call dspy.configure"
    assert program.generate.predict.signature.instructions == "Answer the question in one short sentence."


def test_a_pickled_model_is_refused_with_the_reason_unless_the_operator_allows_it(
    mlflow_tracking_uri: str, logged: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.mlflow_loader import MlflowLoader, MlflowLoadError

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    loader = MlflowLoader(Settings(mlflow_tracking_uri=mlflow_tracking_uri))

    for version in (logged["v1"], logged["v2"]):
        with pytest.raises(MlflowLoadError, match="MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true"):
            loader.load(loader.resolve(parse_mlflow_uri(f"models:/{MODEL}/{version}")))


def test_moving_the_alias_is_served_by_the_running_workers_and_recorded_on_the_job(
    api: httpx.Client, mlflow_stack: Stack, mlflow_tracking_uri: str, logged: dict[str, str]
) -> None:
    redis = mlflow_stack.redis()
    loads_before = int(redis.hget("dj:program_loads", "qa-logged") or 0)
    new = f"models:/{MODEL}/{logged['v2']}"
    running = api.post("/programs/qa-logged/jobs", json={"input": {"question": unique("Slow [lm:delay_s=2]")}})
    running_id = running.json()["id"]
    wait_for(lambda: api.get(f"/jobs/{running_id}").json()["status"] == "running", 20, "the first job to start")

    set_alias(mlflow_tracking_uri, MODEL, "production", logged["v2"])

    def every_worker_serves_it() -> bool:
        workers = api.get("/programs/qa-logged").json()["workers"]
        return bool(workers) and all(w["version"] == new for w in workers)

    wait_for(every_worker_serves_it, 30, f"every worker on {new}")
    # The job that started on version 1 finished on it; nothing was lost in the switch.
    first = wait_finished(api, running_id)
    assert first["status"] == "succeeded" and first["program_version"] == f"models:/{MODEL}/1", first
    question = unique("Which version now?")
    job = api.post("/programs/qa-logged/jobs", params={"wait": 30}, json={"input": {"question": question}}).json()
    assert job["status"] == "succeeded", job
    assert job["program_version"] == new
    assert job["result"] == expected_result(question)
    listed = api.get("/programs/qa-logged").json()
    assert listed["version"] == new and listed["mlflow"]["model_version"] == logged["v2"]
    # One load per worker process for the new version, none per job.
    assert int(redis.hget("dj:program_loads", "qa-logged") or 0) == loads_before + 2


def test_an_unreachable_tracking_server_is_503_with_the_reason_while_qa_keeps_working(lm_api_base: str) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    stack = private_stack(lm_api_base, "redis-mlflow-down")
    stack.extra_env = mlflow_env(nowhere, {"qa-logged": {"mlflow_uri": f"models:/{MODEL}@production"}})
    try:
        stack.start_worker()
        stack.start_api()
        with stack.client() as api:
            reason = f"cannot reach the MLflow tracking server at {nowhere}"
            for path, body in (("jobs", {"input": {"question": "x"}}), ("batches", {"items": [{"input": {}}]})):
                response = api.post(f"/programs/qa-logged/{path}", json=body)
                assert response.status_code == 503, response.text
                assert reason in response.json()["message"]
            listed = {p["name"]: p for p in api.get("/programs").json()}
            assert not listed["qa-logged"]["available"] and reason in listed["qa-logged"]["problem"]
            assert listed["qa"]["available"]

            # Still refused after the worker tried again, and the worker is still up.
            time.sleep(1.5)
            assert api.post("/programs/qa-logged/jobs", json={"input": {"question": "x"}}).status_code == 503
            job = api.post("/jobs", params={"wait": 30}, json={"question": unique("Still up?")})
            assert job.json()["status"] == "succeeded", job.text
            assert job.json()["trace_id"] is None, "tracing is off unless MLFLOW_TRACING says otherwise"
        assert all(p.popen.poll() is None for p in stack.procs)
    finally:
        stack.stop()


def test_feedback_on_a_traced_job_is_logged_on_its_trace_as_assessments(
    api: httpx.Client, mlflow_tracking_uri: str
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import RestException

    job = api.post("/jobs", params={"wait": 30}, json={"question": unique("Judge my trace")}).json()
    given = api.post(
        f"/jobs/{job['id']}/feedback", json={"score": "bad", "comment": "wrong city", "correction": {"answer": "Paris"}}
    )
    assert given.status_code == 201, given.text
    client = MlflowClient(tracking_uri=mlflow_tracking_uri)

    def assessments() -> dict[str, Any]:
        try:
            trace = client.get_trace(job["trace_id"])
        except RestException:
            return {}
        return {a.name: a for a in trace.info.assessments} if trace is not None else {}

    # The workers log it in the background, once MLflow has the trace.
    wait_for(lambda: {"user_feedback", "correction"} <= set(assessments()), 60, "the assessments on the trace")
    found = assessments()
    feedback, correction = found["user_feedback"], found["correction"]
    assert feedback.feedback.value == 0.0 and feedback.rationale == "wrong city"
    assert feedback.source.source_type == "HUMAN" and feedback.metadata["dspy_jobs.job_id"] == job["id"]
    assert correction.expectation.value == {"answer": "Paris"}


def test_an_optimization_of_a_program_from_mlflow_logs_its_candidate_and_promotion_moves_the_alias(
    api: httpx.Client, mlflow_tracking_uri: str
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_tracking_uri)
    serving = client.get_model_version_by_alias(MODEL, "production").version
    word = f"zebra{uuid.uuid4().hex[:6]}"
    since = datetime.now(UTC).isoformat()
    for i in range(4):
        question = f"What does the keeper feed animal {i}? [lm:demo={word}]"
        job = api.post("/programs/qa-logged/jobs", params={"wait": 30}, json={"input": {"question": question}}).json()
        right = expected_result(question)["answer"]
        assert job["result"]["answer"] != right
        api.post(f"/jobs/{job['id']}/feedback", json={"score": "bad", "correction": {"answer": right}})

    body = {"optimizer": "labeled", "trainset": {"created_after": since, "feedback": "corrected"}, "holdout": 0.5}
    created = api.post("/programs/qa-logged/optimizations", json=body).json()
    wait_for(lambda: api.get(created["links"]["self"]).json()["status"] in ("succeeded", "failed"), 120, "it")
    done = api.get(created["links"]["self"]).json()
    assert done["status"] == "succeeded", done["error"]
    candidate = done["result"]["candidate_version"]
    number = candidate.rpartition("/")[2]
    assert candidate == f"models:/{MODEL}/{number}" and done["result"]["scores"] == {"candidate": 1.0, "current": 0.0}
    assert client.get_model_version_by_alias(MODEL, "candidate").version == number

    # Every worker loads the version the `candidate` alias names; then it can be rolled out and promoted.
    def held() -> list[str]:
        found = [v for v in api.get("/programs/qa-logged/versions").json()["versions"] if v["version"] == candidate]
        return found[0]["loaded_by"] if found else []

    wait_for(lambda: len(held()) == 2, 60, "both workers to hold the candidate")
    assert api.put("/programs/qa-logged/rollout", json={"version": candidate, "percent": 50}).status_code == 200
    promoted = api.post("/programs/qa-logged/rollout/promote")
    assert promoted.status_code == 200, promoted.text
    assert client.get_model_version_by_alias(MODEL, "production").version == number
    job = api.post("/programs/qa-logged/jobs", params={"wait": 30}, json={"input": {"question": "Which? (1)"}}).json()
    assert job["program_version"] == candidate

    back = api.post("/programs/qa-logged/rollout/rollback")
    assert back.status_code == 200, back.text
    assert client.get_model_version_by_alias(MODEL, "production").version == serving
    job = api.post("/programs/qa-logged/jobs", params={"wait": 30}, json={"input": {"question": "Which? (2)"}}).json()
    assert job["program_version"] == f"models:/{MODEL}/{serving}"
