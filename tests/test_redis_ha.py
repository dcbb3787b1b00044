"""Redis behind Sentinel: the primary killed under load loses no accepted job, and nothing needs a restart.

The stacks here run on a primary, two replicas and three Sentinels
(harness/redis_ha.py). bench/failover.py drives the load and does the
counting; `python -m bench.failover` runs it more times and writes
bench/results/failover.md.
"""

import json
from collections.abc import Iterator

import httpx
import pytest
import redis

from harness import failover
from harness.processes import ARTIFACTS, Proc, start_api, start_redis, start_worker, wait_for, worker_command
from harness.redis_ha import SentinelGroup
from tests.conftest import FLOWER_AUTH, Stack

pytestmark = pytest.mark.e2e


def test_three_primary_kills_under_load_lose_no_accepted_job_and_the_same_processes_serve_after() -> None:
    report = failover.run(rounds=3, rate_per_s=5, between_s=6, batch_items=30)
    summary = report.summary()
    (ARTIFACTS / "failover-test.json").write_text(json.dumps(summary, indent=1))
    assert report.accepted > 50, summary
    assert report.lost == [], summary
    assert report.unfinished == [], summary
    assert report.batch_counts["succeeded"] + report.batch_counts["failed"] == report.batch_items, summary
    # The worker and the API started before the first kill ran a job after the last one.
    assert report.workers_kept_serving, summary
    assert len(report.rounds) == 3


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    group = SentinelGroup.start()
    yield group
    group.stop()


def test_flower_finds_the_workers_through_the_sentinels(group: SentinelGroup, lm_api_base: str) -> None:
    stack = Stack(group.env()["REDIS_URL"], lm_api_base, extra_env=group.env())
    try:
        worker = stack.start_worker()
        url, _ = stack.start_flower()

        def listed() -> bool:
            return worker.hostname in httpx.get(f"{url}/api/workers", auth=FLOWER_AUTH, timeout=5).json()

        wait_for(listed, 30, "Flower to list the worker")
    finally:
        stack.stop()


def test_a_job_no_replica_confirms_is_refused_with_503_and_the_reason() -> None:
    primary, url = start_redis("redis-no-replica")
    assert primary is not None
    env = {"REDIS_URL": url, "REDIS_MIN_REPLICAS_ACKED": "1", "REDIS_REPLICA_ACK_TIMEOUT_S": "0.2"}
    procs: list[Proc] = [primary]
    try:
        api, base = start_api(env, name="api-no-replica")
        procs.append(api)
        with httpx.Client(base_url=base, timeout=10) as client:
            refused = client.post("/jobs", json={"question": "nobody holds a copy"})
            assert refused.status_code == 503
            assert "replica" in refused.json()["message"]
            assert refused.headers["Retry-After"] == "1"
            assert client.post("/batches", json={"items": [{"question": "nor of me"}]}).status_code == 503

            replica, replica_url = start_redis("redis-replica-of-no-replica")
            assert replica is not None
            procs.append(replica)
            port = url.rsplit(":", 1)[1].split("/")[0]
            redis.Redis.from_url(replica_url).replicaof("127.0.0.1", port)
            wait_for(lambda: client.post("/jobs", json={"question": "now held twice"}).status_code == 202, 20, "202")
            # Each its own WAIT of 0.2 s: on a loaded machine the first may still miss it.
            wait_for(
                lambda: client.post("/batches", json={"items": [{"question": "held twice too"}]}).status_code == 202,
                20,
                "a batch's 202",
            )
    finally:
        for proc in reversed(procs):
            proc.stop()


def test_worker_and_api_connected_before_a_failover_serve_after_it_without_restart(
    group: SentinelGroup, lm_api_base: str
) -> None:
    env = Stack(group.env()["REDIS_URL"], lm_api_base, extra_env=group.env()).env
    worker = start_worker(env, name="worker-ha")
    api, base = start_api(env, name="api-ha")
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            before = client.post("/jobs", params={"wait": 20}, json={"question": "before the failover"}).json()
            assert before["status"] == "succeeded"
            old = group.kill_primary()
            group.wait_for_failover(old)

            def served() -> bool:
                after = client.post("/jobs", params={"wait": 20}, json={"question": "after the failover"})
                return after.status_code == 200 and after.json()["status"] == "succeeded"

            wait_for(served, 30, "a job after the failover")
            after = client.post("/jobs", params={"wait": 20}, json={"question": "and another"}).json()
            assert after["worker"] == before["worker"]  # the same worker process, never restarted
            assert worker.popen.poll() is None and api.popen.poll() is None
    finally:
        api.stop()
        worker.stop()


def test_a_password_protected_group_serves_jobs_with_redis_password_and_keeps_it_out_of_the_logs(
    lm_api_base: str,
) -> None:
    group = SentinelGroup.start(password="s3cret-redis-pw")
    env = Stack(group.env()["REDIS_URL"], lm_api_base, extra_env=group.env()).env
    assert "s3cret" not in env["REDIS_URL"]  # the password reaches the service as REDIS_PASSWORD only
    procs: list[Proc] = []
    try:
        worker = Proc("worker-ha-password", worker_command("worker.celery_app", "interactive", 4, "pw@test"), env)
        procs.append(worker)
        api, base = start_api(env, name="api-ha-password")
        procs.append(api)
        with httpx.Client(base_url=base, timeout=30) as client:

            def served() -> bool:
                job = client.post("/jobs", params={"wait": 20}, json={"question": "behind a password"})
                return bool(job.json().get("status") == "succeeded")

            wait_for(served, 60, "a job through password-protected Sentinel", worker)
        assert "s3cret-redis-pw" not in worker.own_log() + api.own_log()
    finally:
        for proc in reversed(procs):
            proc.stop()
        group.stop()
