"""Operating the service: structured logs that name the job, payloads kept out of
them, and `/ready` reporting each dependency. Real processes, real log files."""

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from harness.processes import Proc, free_port, wait_for
from tests.conftest import Stack
from tests.test_batches import submit_batch, wait_batch
from tests.test_jobs import unique, wait_finished

pytestmark = pytest.mark.e2e


def json_lines(proc: Proc) -> list[dict[str, Any]]:
    """Every JSON log line the process wrote (Celery's banner is plain text on stdout)."""
    lines = []
    for line in proc.own_log().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_json_logs_carry_the_job_and_batch_ids_in_the_api_and_the_worker(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    stack.extra_env = {"LOG_FORMAT": "json"}
    worker = stack.start_worker(name="worker-json")
    bulk = stack.start_worker(name="worker-json-bulk", queues="bulk")
    stack.start_api()
    api = stack.procs[-1]
    with stack.client() as client:
        job_id = client.post("/jobs", json={"question": unique("log me [lm:fail_times=1,status=500]")}).json()["id"]
        assert wait_finished(client, job_id)["status"] == "succeeded"
        batch_id = submit_batch(client, [{"question": unique(f"logged item {i}")} for i in range(2)])["id"]
        assert wait_batch(client, batch_id)["status"] == "completed"

    def both_items_logged() -> bool:
        return (
            sum(
                f"{batch_id}-" in line.get("job_id", "") and "succeeded" in line["message"] for line in json_lines(bulk)
            )
            == 2
        )

    wait_for(both_items_logged, 10, "the bulk worker's lines about both items", bulk)
    api_lines, worker_lines, bulk_lines = json_lines(api), json_lines(worker), json_lines(bulk)
    for line in api_lines + worker_lines + bulk_lines:
        assert {"ts", "level", "logger", "message"} <= set(line), line
    about_job = [line for line in worker_lines if line.get("job_id") == job_id]
    # Our lines carry it: the retry and how the job ended (Celery's per-task lines are logged at DEBUG only).
    assert any("succeeded" in line["message"] and line["level"] == "INFO" for line in about_job)
    assert any("retrying" in line["message"] and line["level"] == "WARNING" for line in about_job)
    assert any(line.get("job_id") == job_id and "submitted" in line["message"] for line in api_lines)
    # Batch items: their job id and their batch's id, on the line that says how each ended.
    item_lines = [line for line in bulk_lines if line.get("job_id", "").startswith(f"{batch_id}-")]
    assert item_lines and all(line["batch_id"] == batch_id for line in item_lines)
    assert sum("succeeded" in line["message"] for line in item_lines) == 2
    assert any(line.get("batch_id") == batch_id and "batch of 2" in line["message"] for line in api_lines)
    # Nothing logged outside a job claims one.
    assert all(line["job_id"] for line in worker_lines if "job_id" in line)


def test_text_logs_are_the_default_and_name_the_job_too(stack: Stack, client: httpx.Client) -> None:
    job_id = client.post("/jobs", params={"wait": 20}, json={"question": unique("plain text")}).json()["id"]
    worker = next(proc for proc in stack.procs if proc.name == "worker")
    wait_for(lambda: f"[job_id={job_id}]" in worker.own_log(), 10, "the worker's lines about the job", worker)

    worker_log = worker.own_log()
    lines = [line for line in worker_log.splitlines() if f"[job_id={job_id}]" in line]
    assert lines and not any(line.startswith("{") for line in lines)


def test_questions_and_answers_stay_out_of_the_logs_unless_asked(make_stack: Callable[..., Stack]) -> None:
    def run(log_payloads: bool) -> tuple[str, str]:
        stack = make_stack()
        stack.extra_env = {"LOG_PAYLOADS": "true"} if log_payloads else {}
        worker = stack.start_worker(name=f"worker-payloads-{log_payloads}")
        stack.start_api()
        marker = unique("a private question [lm:garbage]")
        with stack.client() as client:
            job = client.post("/jobs", params={"wait": 20}, json={"question": marker}).json()
        assert job["status"] == "failed" and job["error"]["type"] == "AdapterParseError"
        time.sleep(0.3)
        logs = worker.own_log() + stack.procs[-1].own_log()
        return marker, logs

    # What the scripted LM answers to [lm:garbage]: the model's output.
    answer = "I am not going to follow the format at all."
    marker, quiet = run(log_payloads=False)
    assert marker not in quiet and answer not in quiet
    assert "LM Response: [payload omitted" in quiet
    _, verbose = run(log_payloads=True)
    assert answer in verbose


def test_ready_reports_redis_the_workers_per_queue_and_the_lm(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    worker = stack.start_worker()
    stack.start_api()
    with stack.client() as client:
        only_interactive = client.get("/ready")
        bulk = stack.start_worker(name="worker-bulk", queues="bulk")
        both = client.get("/ready")

    assert only_interactive.status_code == 200
    body = only_interactive.json()
    assert body["status"] == "ready"
    assert body["checks"]["redis"] == "ok"
    assert body["checks"]["queues"]["interactive"]["workers"] == [worker.hostname]
    assert body["checks"]["queues"]["bulk"]["workers"] == []
    assert body["warnings"] == ["no worker consumes the bulk queue"]
    assert body["checks"]["lm"]["status"] == "ok"
    assert body["checks"]["lm"]["url"] == f"{stack.lm_api_base}/models"
    assert both.json()["checks"]["queues"]["bulk"]["workers"] == [bulk.hostname]
    assert both.json()["warnings"] == []


def test_an_lm_that_does_not_answer_is_reported_but_not_fatal(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    stack.lm_api_base = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    stack.start_worker()
    stack.start_api()
    with stack.client() as client:
        started = time.monotonic()
        response = client.get("/ready")
        took_s = time.monotonic() - started

    assert response.status_code == 200
    lm = response.json()["checks"]["lm"]
    assert lm["status"] == "down" and "refused" in lm["reason"].lower()
    assert any("does not answer" in w for w in response.json()["warnings"])
    assert took_s < 5


def test_a_hosted_provider_default_endpoint_is_not_probed(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    stack.extra_env = {"LM_API_BASE": "", "LM_API_KEY": "sk-never-sent-anywhere"}
    stack.start_api()
    with stack.client() as client:
        response = client.get("/ready")

    assert response.status_code == 503  # no worker; the LM part is only reported
    assert response.json()["checks"]["lm"]["status"] == "not checked"
