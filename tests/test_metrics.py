"""`GET /metrics` on real stacks: what the API counts, what the workers count
through Redis, what is read from Redis at scrape time, and several API
processes adding up through PROMETHEUS_MULTIPROC_DIR."""

import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse
from prometheus_client.parser import text_string_to_metric_families

from harness.processes import ARTIFACTS, Proc, free_port, wait_for
from tests.conftest import Stack
from tests.test_batches import submit_batch, wait_batch
from tests.test_jobs import unique, wait_finished

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def test_job_lifecycle_metrics_from_the_api_and_the_workers(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    stack.start_worker()
    stack.start_worker(name="worker-bulk", queues="bulk")
    stack.start_api()
    with stack.client() as client:
        ok = [client.post("/jobs", json={"question": unique(f"count me {i}")}).json()["id"] for i in range(3)]
        garbage = client.post("/jobs", json={"question": unique("[lm:garbage]")}).json()["id"]
        retried = client.post("/jobs", json={"question": unique("[lm:fail_times=1,status=500] once")}).json()["id"]
        jobs = [wait_finished(client, job_id) for job_id in [*ok, garbage, retried]]
        batch_id = submit_batch(client, [{"question": unique(f"batch {i}")} for i in range(4)])["id"]
        assert wait_batch(client, batch_id)["status"] == "completed"
        # A job's outcome is counted just after its record is final.
        wait_for(lambda: value(scrape(client), "dspy_jobs_finished_total") == 9, 10, "every outcome counted")
        samples = scrape(client)

    assert [j["status"] for j in jobs] == ["succeeded"] * 3 + ["failed", "succeeded"]
    assert jobs[-1]["attempts"] == 2
    assert value(samples, "dspy_jobs_redis_up") == 1
    assert value(samples, "dspy_jobs_submitted_total", program="qa", key="anonymous") == 5
    assert value(samples, "dspy_jobs_batches_submitted_total", key="anonymous") == 1
    # Batch items are jobs too: 4 + the 4 succeeded interactive ones.
    assert value(samples, "dspy_jobs_finished_total", program="qa", status="succeeded") == 8
    assert value(samples, "dspy_jobs_finished_total", program="qa", status="failed") == 1
    assert value(samples, "dspy_jobs_retries_total", program="qa") == 1
    prompt = value(samples, "dspy_jobs_lm_tokens_total", kind="prompt", model="openai/simulated")
    completion = value(samples, "dspy_jobs_lm_tokens_total", kind="completion", model="openai/simulated")
    usage = [j["usage"] for j in jobs if j["usage"]]
    assert prompt >= sum(u["prompt_tokens"] for u in usage) > 0
    assert completion >= sum(u["completion_tokens"] for u in usage) > 0
    assert value(samples, "dspy_jobs_queue_wait_seconds_count", program="qa") == 9
    assert value(samples, "dspy_jobs_run_seconds_count", program="qa", status="succeeded") == 8
    assert value(samples, "dspy_jobs_run_seconds_bucket", program="qa", status="succeeded", le="+Inf") == 8
    assert 0 < value(samples, "dspy_jobs_run_seconds_sum", program="qa") < 60
    assert value(samples, "dspy_jobs_batches_finished_total", status="completed") == 1
    assert value(samples, "dspy_jobs_workers_online", queue="interactive") == 1
    assert value(samples, "dspy_jobs_workers_online", queue="bulk") == 1
    assert value(samples, "dspy_jobs_in_flight") == 0


def test_a_job_is_counted_once_however_often_its_message_is_delivered(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    stack.start_worker()
    stack.start_api()
    with stack.client() as client:
        job_id = client.post("/jobs", params={"wait": 20}, json={"question": unique("only once")}).json()["id"]
        # A redelivery of the finished job's message: the worker drops it, and must not count it again.
        from core.queue import RUN_JOB_TASK, make_celery
        from core.settings import Settings

        make_celery(Settings(redis_url=stack.redis_url)).send_task(RUN_JOB_TASK, args=[job_id], task_id=job_id)
        wait_for(lambda: stack.redis().llen("interactive") == 0, 10, "the redelivered message to be taken")
        time.sleep(0.5)  # the redelivered message has had the time to be counted, if it were
        samples = scrape(client)

    assert value(samples, "dspy_jobs_finished_total", status="succeeded") == 1


def test_queue_depth_streams_and_open_batches_are_read_at_scrape_time(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    stack.start_api()  # no worker: everything stays queued
    with stack.client() as client:
        job_ids = [client.post("/jobs", json={"question": f"waiting {i}"}).json()["id"] for i in range(3)]
        submit_batch(client, [{"question": "batched"}])
        with connect_sse(client, "GET", f"/jobs/{job_ids[0]}/events") as source:
            assert source.response.status_code == 200
            during = scrape(client)
        wait_for(
            lambda: value(scrape(client), "dspy_jobs_sse_streams_open", kind="job") == 0,
            10,
            "the stream gauge to drop when the client left",
        )
        cancelled = client.post(f"/jobs/{job_ids[1]}/cancel").status_code

    assert cancelled == 200
    assert value(during, "dspy_jobs_queue_depth", queue="interactive") == 3
    assert value(during, "dspy_jobs_queue_depth", queue="bulk") == 1  # the batch's item
    assert value(during, "dspy_jobs_lm_waiting", model=stack.model, priority="bulk") == 1
    assert value(during, "dspy_jobs_sse_streams_open", kind="job") == 1
    assert value(during, "dspy_jobs_batches_open", status="queued") == 1
    assert value(during, "dspy_jobs_workers_online", queue="interactive") == 0
    assert value(during, "dspy_jobs_in_flight") == 0


def test_metrics_still_answer_while_redis_is_down(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    stack.start_api()
    with stack.client() as client:
        client.post("/jobs", json={"question": "before the outage"})
        stack.procs[0].kill()  # redis-server
        samples = scrape(client)

    assert value(samples, "dspy_jobs_redis_up") == 0
    assert value(samples, "dspy_jobs_submitted_total") == 1
    assert not any(name == "dspy_jobs_queue_depth" for name, _ in samples)


def start_api_processes(stack: Stack, workers: int, multiproc_dir: Path) -> str:
    port = free_port()
    env = {**stack.env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    cmd = [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port), "--workers", str(workers)]
    proc = Proc("api-multiprocess", [*cmd, "--log-level", "warning"], env)
    stack.procs.append(proc)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, 60, "API processes", proc)
    return base


def test_several_api_processes_add_up_through_the_multiprocess_directory(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    multiproc_dir = ARTIFACTS / f"prometheus-{free_port()}"
    multiproc_dir.mkdir(parents=True)
    base = start_api_processes(stack, 2, multiproc_dir)
    # A new connection per request, so the kernel spreads them over both processes; each writes its own file
    # once it has counted something. Until both have (the second may still be starting), submit more.
    submitted = 0
    while submitted < 12 or len(list(multiproc_dir.glob("counter_*.db"))) < 2:
        assert submitted < 300, "every submission went to the same API process"
        assert httpx.post(f"{base}/jobs", json={"question": f"spread {submitted}"}).status_code == 202
        submitted += 1
    totals = []
    for _ in range(6):
        with httpx.Client(base_url=base) as client:
            totals.append(value(scrape(client), "dspy_jobs_submitted_total"))

    # Whichever process answers a scrape, it reports every process's submissions.
    assert totals == [float(submitted)] * 6
