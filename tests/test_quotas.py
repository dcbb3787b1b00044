"""One key's volume never reaches another's work: quotas per key, a Redis that never fills, and what a key
may see of the others (api/quotas.py, api/redis_memory.py, api/auth.py)."""

import hashlib
import json
import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest

from harness.processes import free_port, start_api, start_redis, start_worker, wait_for
from tests.conftest import Stack
from tests.test_jobs import unique

pytestmark = pytest.mark.e2e


def new_key(name: str) -> tuple[str, str]:
    """A key and its API_KEYS entry."""
    key = f"dj_{name}_{uuid.uuid4().hex}"
    return key, f"{name}:{hashlib.sha256(key.encode()).hexdigest()}"


BYTES, OPEN, QUEUED, POLLS, OTHER, OPS = (new_key(n) for n in ("bytes", "open", "queued", "polls", "other", "ops"))
MLFLOW_SECRET = f"s3cret-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def quota_stack(lm_api_base: str) -> Iterator[Stack]:
    """Keys with small quotas, an interactive worker and no bulk worker (batches stay open), one operator's key,
    and a program from an MLflow server that does not answer at a URI with a password in it."""
    redis_proc, url = start_redis("redis-quotas")
    assert redis_proc is not None, "the quota tests need redis-server for a private stack"
    stack = Stack(url, lm_api_base, [redis_proc])
    stack.extra_env = {
        "API_KEYS": ",".join(entry for _, entry in (BYTES, OPEN, QUEUED, POLLS, OTHER)),
        "API_ADMIN_KEYS": OPS[1],
        "KEY_MAX_STORED_BYTES": "20000",
        "KEY_MAX_OPEN_BATCHES": "2",
        "KEY_MAX_QUEUED_ITEMS": "30",
        "KEY_MAX_LONG_POLLS": "1",
        "MLFLOW_TRACKING_URI": f"http://ops:{MLFLOW_SECRET}@127.0.0.1:{free_port()}",
        "PROGRAMS": json.dumps({"remote": {"mlflow_uri": "models:/remote/1"}}),
    }
    stack.procs.append(start_worker(stack.env, name="worker-quotas", queues="interactive"))
    proc, stack.api_url = start_api(stack.env, name="api-quotas")
    stack.procs.append(proc)
    yield stack
    stack.stop()


def client(stack: Stack, key: tuple[str, str]) -> httpx.Client:
    return httpx.Client(base_url=stack.api_url, timeout=30, headers={"Authorization": f"Bearer {key[0]}"})


def long_polls_held(stack: Stack) -> int:
    r = stack.redis()
    return sum(int(r.zcard(key)) for key in r.scan_iter(match="dj:waits:*"))


def assert_quota_refusal(response: httpx.Response, setting: str) -> None:
    assert response.status_code == 429, response.text
    assert setting in response.json()["detail"] and response.headers["retry-after"]


def test_a_key_at_its_stored_bytes_quota_is_429_and_stores_nothing(quota_stack: Stack) -> None:
    with client(quota_stack, BYTES) as c:
        first = c.post("/jobs", json={"question": unique("x" * 3900)})
        more = [c.post("/jobs", json={"question": unique("y" * 3900)}) for _ in range(5)]
        refused = next(r for r in more if r.status_code != 202)

    assert first.status_code == 202
    assert_quota_refusal(refused, "KEY_MAX_STORED_BYTES")
    assert "of 20000" in refused.json()["detail"]


def test_a_key_at_its_open_batches_quota_is_429_until_one_ends(quota_stack: Stack) -> None:
    item = {"items": [{"question": unique("open")}]}
    with client(quota_stack, OPEN) as c:
        ids = [c.post("/batches", json=item).json()["id"] for _ in range(2)]
        refused = c.post("/batches", json=item)
        assert c.post(f"/batches/{ids[0]}/cancel").status_code == 200
        again = c.post("/batches", json=item)

    assert_quota_refusal(refused, "KEY_MAX_OPEN_BATCHES")
    assert again.status_code == 202, again.text


def test_a_key_at_its_queued_items_quota_is_429(quota_stack: Stack) -> None:
    with client(quota_stack, QUEUED) as c:
        first = c.post("/batches", json={"items": [{"question": f"q{i}"} for i in range(20)]})
        refused = c.post("/batches", json={"items": [{"question": f"q{i}"} for i in range(15)]})
        fits = c.post("/batches", json={"items": [{"question": f"q{i}"} for i in range(10)]})

    assert first.status_code == 202
    assert_quota_refusal(refused, "KEY_MAX_QUEUED_ITEMS")
    assert "20 of 30" in refused.json()["detail"]
    assert fits.status_code == 202


def test_a_key_at_its_long_poll_quota_is_429_while_another_keys_job_runs(quota_stack: Stack) -> None:
    with client(quota_stack, POLLS) as c, client(quota_stack, OTHER) as other:
        slow = c.post("/jobs", json={"question": unique("slow [lm:delay_s=4]")}).json()["id"]
        waiting: list[httpx.Response] = []

        def wait_for_the_slow_job() -> None:
            with client(quota_stack, POLLS) as own:
                waiting.append(own.get(f"/jobs/{slow}", params={"wait": 20}))

        holder = threading.Thread(target=wait_for_the_slow_job)
        holder.start()
        wait_for(lambda: long_polls_held(quota_stack) == 1, 10, "the first long poll to hold its slot")
        refused = c.post("/jobs", params={"wait": 20}, json={"question": unique("second wait")})
        theirs = other.post("/jobs", params={"wait": 20}, json={"question": unique("another key's job")})
        holder.join()

    assert_quota_refusal(refused, "requests waiting for a job to end")
    assert theirs.status_code == 200 and theirs.json()["status"] == "succeeded"
    assert waiting[0].json()["status"] == "succeeded"


def test_metrics_ready_and_models_show_the_deployment_to_an_operators_key_only(quota_stack: Stack) -> None:
    with client(quota_stack, OTHER) as tenant, client(quota_stack, OPS) as ops:
        assert tenant.get("/metrics").status_code == 403
        metrics = ops.get("/metrics")
        tenant_ready, ops_ready = tenant.get("/ready").json(), ops.get("/ready").json()
        tenant_models, ops_models = tenant.get("/models").json(), ops.get("/models").json()

    assert metrics.status_code == 200 and 'key="bytes"' in metrics.text
    assert "dspy_jobs_redis_memory_bytes" in metrics.text
    assert isinstance(ops_ready["checks"]["workers"], list) and "url" in ops_ready["checks"]["lm"]
    assert tenant_ready["checks"]["workers"] == 1
    assert "worker-quotas" not in json.dumps(tenant_ready) and "http" not in json.dumps(tenant_ready)
    assert all(m["api_base"] is None for m in tenant_models["models"])
    assert all(isinstance(m["api_base"], str) for m in ops_models["models"])


def test_a_credential_in_the_mlflow_uri_reaches_no_answer(quota_stack: Stack) -> None:
    with client(quota_stack, OPS) as ops:
        wait_for(lambda: ops.get("/programs/remote").json().get("problem") is not None, 60, "the worker's report")
        program = ops.get("/programs/remote").text
        job = ops.post("/programs/remote/jobs", json={"input": {"question": "hi"}})

    assert MLFLOW_SECRET not in program and MLFLOW_SECRET not in job.text, (program, job.text)


def test_above_the_redis_high_water_mark_submissions_are_503_and_running_jobs_finish(lm_api_base: str) -> None:
    redis_proc, url = start_redis("redis-high-water")
    assert redis_proc is not None
    stack = Stack(url, lm_api_base, [redis_proc])
    stack.extra_env = {"REDIS_HIGH_WATER": "0.5"}
    try:
        r = stack.redis()
        r.config_set("maxmemory", 64 * 1024**2)
        stack.start_worker()
        stack.start_api()
        with stack.client() as c:
            running = c.post("/jobs", json={"question": unique("finishes anyway [lm:delay_s=3]")}).json()["id"]
            wait_for(lambda: c.get(f"/jobs/{running}").json()["status"] == "running", 30, "the job to start")
            # Past the mark (32 MiB), well below maxmemory.
            for i in range(40):
                r.set(f"ballast:{i}", b"\0" * 1024**2)
            wait_for(lambda: c.post("/jobs", json={"question": "refused?"}).status_code == 503, 10, "the mark")
            job = c.post("/jobs", json={"question": unique("refused")})
            batch = c.post("/batches", json={"items": [{"question": "refused"}]})
            read = c.get(f"/jobs/{running}")

            assert job.status_code == 503 and "REDIS_HIGH_WATER" in job.json()["detail"]
            assert job.headers["retry-after"] == "10"
            assert batch.status_code == 503 and read.status_code == 200
            finished = c.get(f"/jobs/{running}", params={"wait": 30}).json()
            assert finished["status"] == "succeeded" and finished["result"]

            r.delete(*[f"ballast:{i}" for i in range(40)])
            wait_for(lambda: c.post("/jobs", json={"question": unique("taken")}).status_code == 202, 10, "room")
    finally:
        stack.stop()
