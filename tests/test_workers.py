"""Worker processes: load the program once, and readiness follows them."""

import time
import uuid
from collections.abc import Callable

import httpx
import pytest

from core import keys
from harness.processes import wait_for
from tests.conftest import Stack
from tests.test_jobs import wait_finished

pytestmark = pytest.mark.e2e


def test_twenty_jobs_through_one_worker_process_load_the_program_once(make_stack: Callable[[], Stack]) -> None:
    stack = make_stack()
    worker = stack.start_worker()
    stack.start_api()
    with stack.client() as client:
        ids = [client.post("/jobs", json={"question": f"question {i}"}).json()["id"] for i in range(20)]
        deadline = time.monotonic() + 60
        jobs = []
        for job_id in ids:
            while (job := client.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
                assert time.monotonic() < deadline, job
                time.sleep(0.05)
            jobs.append(job)

    assert [j["status"] for j in jobs] == ["succeeded"] * 20
    assert {j["worker"] for j in jobs} == {f"{worker.hostname}:{worker.pid}"}
    assert stack.redis().hget(keys.PROGRAM_LOADS, "qa") == "1"


def test_one_worker_process_has_more_lm_calls_in_flight_than_dspys_100_connection_default(
    make_stack: Callable[[], Stack], lm_api_base: str
) -> None:
    """Jobs share one event loop per process, so one pool of DSPy's LM connections (worker/streaming.py)."""
    jobs = 130
    stack = make_stack()
    stack.extra_env = {"WORKER_CONCURRENCY": str(jobs)}
    stack.start_worker(concurrency=jobs)
    stack.start_api()
    tag = uuid.uuid4().hex[:8]
    questions = [f"in flight {tag} {i} [lm:delay_s=8]" for i in range(jobs)]
    with stack.client() as client:
        ids = [client.post("/jobs", json={"question": q}).json()["id"] for q in questions]
        for job_id in ids:
            assert wait_finished(client, job_id, timeout_s=60)["status"] == "succeeded"

    seen = httpx.get(f"{lm_api_base.removesuffix('/v1')}/_requests").json()
    received = [r["at"] for r in seen if tag in r["question"]]
    assert len(received) == jobs
    # Every request reached the LM before the first could have been answered: all were in flight at once.
    assert max(received) - min(received) < 8


def test_ready_is_503_without_a_worker_and_200_with_one(make_stack: Callable[[], Stack]) -> None:
    stack = make_stack()
    stack.start_api()
    with stack.client() as client:
        response = client.get("/ready")
        assert response.status_code == 503
        assert "no worker online" in response.json()["reason"]

        worker = stack.start_worker()
        assert client.get("/ready").status_code == 200

        worker.stop()
        wait_for(lambda: client.get("/ready").status_code == 503, 10, "/ready to notice the worker left")


def test_ready_is_503_when_a_worker_dies_without_saying_goodbye(make_stack: Callable[[], Stack]) -> None:
    stack = make_stack()
    stack.start_api()
    worker = stack.start_worker()
    with stack.client() as client:
        assert client.get("/ready").status_code == 200
        worker.kill()
        # The heartbeat ages out after WORKER_OFFLINE_AFTER_S (3 s in tests).
        wait_for(lambda: client.get("/ready").status_code == 503, 10, "/ready to notice the dead worker")


def test_health_answers_even_when_redis_is_gone(make_stack: Callable[[], Stack]) -> None:
    stack = make_stack()
    stack.start_api()
    redis_proc = stack.procs[0]
    redis_proc.kill()
    with stack.client() as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503 and "Redis" in ready.json()["reason"]
        submit = client.post("/jobs", json={"question": "anyone there?"})
        assert submit.status_code == 503
        assert "Redis" in submit.json()["detail"]
