"""LM capacity with real processes: a scripted LM that counts the calls it has open, real workers.

Each test gets its own LM simulator (so its counts and outages are its own)
and its own Redis.
"""

import hashlib
import itertools
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from harness.processes import Proc, start_lm_simulator, wait_for
from tests.conftest import Stack, private_stack
from tests.test_batches import submit_batch, wait_batch
from tests.test_jobs import unique, wait_finished

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., tuple[Stack, str]]


@pytest.fixture
def capacity_stack() -> Iterator[MakeStack]:
    """A private LM simulator (started with `lm_args`) and a private stack on it, nothing running yet."""
    made: list[tuple[Stack, Proc]] = []

    def make(*lm_args: str, **env: str) -> tuple[Stack, str]:
        lm, base = start_lm_simulator("lm-simulator-capacity", *lm_args)
        stack = private_stack(base)
        stack.extra_env = env
        made.append((stack, lm))
        return stack, base.removesuffix("/v1")

    yield make
    for stack, lm in made:
        stack.stop()
        lm.stop()


def lm_requests(lm: str) -> list[dict[str, Any]]:
    requests: list[dict[str, Any]] = httpx.get(f"{lm}/_requests").json()
    return sorted(requests, key=lambda r: float(r["at"]))


def default_model(client: httpx.Client) -> dict[str, Any]:
    model: dict[str, Any] = next(m for m in client.get("/models").json()["models"] if m["default"])
    return model


def test_two_worker_processes_never_open_more_calls_than_the_models_limit(capacity_stack: MakeStack) -> None:
    stack, lm = capacity_stack("--ttft-s", "0.3", LM_MAX_IN_FLIGHT="3")
    stack.start_worker(name="worker-a")
    stack.start_worker(name="worker-b")
    stack.start_worker(name="worker-bulk", queues="bulk")
    stack.start_api()
    with stack.client() as client:
        jobs = [client.post("/jobs", json={"question": unique(f"limited {i}")}).json()["id"] for i in range(24)]
        batch = submit_batch(client, [{"question": unique(f"limited item {i}")} for i in range(24)])
        done = [wait_finished(client, job_id, timeout_s=90) for job_id in jobs]
        assert wait_batch(client, batch["id"], timeout_s=90)["counts"]["succeeded"] == 24
        assert default_model(client)["limits"]["max_in_flight"] == 3

    assert all(job["status"] == "succeeded" for job in done)
    assert {job["worker"].split("@")[0].rsplit("-", 1)[0] for job in done} == {"worker-a", "worker-b"}
    # The limit held, and it was what held the LM back (reached, not merely respected).
    assert httpx.get(f"{lm}/_stats").json()["max_open"] == 3
    # Waiting for a slot is not an attempt.
    assert all(job["attempts"] == 1 for job in done)
    assert any(job["capacity_wait_s"] > 0 for job in done)


def test_an_interactive_job_behind_fifty_waiting_bulk_items_starts_within_one_bulk_call(
    capacity_stack: MakeStack,
) -> None:
    """Three bulk workers wait for the one slot each time it frees; each interactive job still gets it next."""
    stack, lm = capacity_stack(LM_MAX_IN_FLIGHT="1")
    stack.start_worker()
    for name in ("bulk-a", "bulk-b", "bulk-c"):
        stack.start_worker(name=name, queues="bulk")
    stack.start_api()
    bulk_calls_before: list[int] = []
    with stack.client() as client:
        batch = submit_batch(client, [{"question": unique(f"[lm:delay_s=0.5] bulk {i}")} for i in range(51)])
        wait_for(lambda: len(lm_requests(lm)) >= 2, 30, "the batch to be under way")
        for i in range(4):
            submitted = time.time()
            question = unique(f"interactive {i}")
            job = client.post("/jobs", params={"wait": 30}, json={"question": question}).json()
            assert job["status"] == "succeeded"
            after = [r["question"] for r in lm_requests(lm) if float(r["at"]) >= submitted]
            bulk_calls_before.append(after.index(question))
        progress = client.get(f"/batches/{batch['id']}").json()
        client.post(f"/batches/{batch['id']}/cancel")

    # Each job waited for the bulk call in progress and, if one began in the moment before the job asked for a
    # slot, that one: never for a second bulk call, although three bulk workers asked each time a slot freed.
    assert all(n <= 1 for n in bulk_calls_before), bulk_calls_before
    assert progress["counts"]["queued"] >= 35


def test_two_batches_interleave(capacity_stack: MakeStack) -> None:
    stack, lm = capacity_stack("--ttft-s", "0.05", LM_MAX_IN_FLIGHT="1")
    stack.start_services()
    with stack.client() as client:
        big = submit_batch(client, [{"question": unique(f"big {i}")} for i in range(60)])
        wait_for(lambda: len(lm_requests(lm)) >= 3, 30, "the big batch to be under way")
        small = submit_batch(client, [{"question": unique(f"small {i}")} for i in range(10)])
        finished_small = wait_batch(client, small["id"], timeout_s=60)
        big_then = client.get(f"/batches/{big['id']}").json()
        wait_batch(client, big["id"], timeout_s=120)

    assert finished_small["counts"]["succeeded"] == 10
    # The small batch did not wait for the big one: half of the turns were its own.
    assert big_then["counts"]["queued"] >= 30
    order = ["small" if " small " in f" {r['question']} " else "big" for r in lm_requests(lm)]
    first_small = order.index("small")
    turns = order[first_small : first_small + 20]
    assert turns.count("small") == 10 and all(a != b for a, b in itertools.pairwise(turns)), turns


def test_a_429_with_retry_after_pauses_every_worker_and_jobs_in_its_window_all_succeed_after_it(
    capacity_stack: MakeStack,
) -> None:
    stack, lm = capacity_stack(LM_MAX_IN_FLIGHT="8")
    stack.start_worker(name="worker-a")
    stack.start_worker(name="worker-b")
    stack.start_api()
    with stack.client() as client:
        httpx.post(f"{lm}/_outage", json={"status": 429, "retry_after_s": 2, "for_s": 10})
        window_ends = time.time() + 10
        first = client.post("/jobs", json={"question": unique("first into the window")}).json()["id"]
        # Once the refusal has paused the model: calls granted before the pause existed would be refused too.
        wait_for(lambda: default_model(client)["paused_until"] is not None, 10, "the first refusal to pause the model")
        jobs = [first] + [
            client.post("/jobs", json={"question": unique(f"in the window {i}")}).json()["id"] for i in range(9)
        ]
        done = [wait_finished(client, job_id, timeout_s=60) for job_id in jobs]
        model = default_model(client)
        waiting = [e for e in client.get(f"/jobs/{jobs[5]}/events").text.splitlines() if "waiting" in e]

    assert all(job["status"] == "succeeded" and job["attempts"] == 1 for job in done), done
    refused = [float(r["at"]) for r in lm_requests(lm) if r.get("outage")]
    # One call at a time reached the LM during the window, each the provider's 2 s after the last.
    assert 3 <= len(refused) <= 6, refused
    assert all(b - a >= 1.9 for a, b in itertools.pairwise(refused)), refused
    assert all(float(r["at"]) >= window_ends for r in lm_requests(lm) if not r.get("outage"))
    assert model["rate_limited_total"] == len(refused) and model["pauses_total"] >= len(refused)
    assert waiting, "a job that waits says so in its event stream"


def test_a_job_past_its_deadline_ends_expired_and_never_reaches_the_lm(capacity_stack: MakeStack) -> None:
    stack, lm = capacity_stack(LM_MAX_IN_FLIGHT="1", WORKER_CONCURRENCY="1")
    stack.start_services()
    with stack.client() as client:
        holder = client.post("/jobs", json={"question": unique("[lm:delay_s=4] holds the only slot")}).json()["id"]
        wait_for(lambda: len(lm_requests(lm)) == 1, 10, "the slot to be taken")
        waiting = client.post("/jobs", json={"question": unique("waits"), "expires_after_s": 1}).json()["id"]
        queued = client.post("/jobs", json={"question": unique("stays queued"), "expires_after_s": 1}).json()["id"]
        batch = submit_batch(client, [{"question": unique(f"late item {i}")} for i in range(3)], expires_after_s=1)
        expired = [wait_finished(client, job_id, timeout_s=10) for job_id in (waiting, queued)]
        late = wait_batch(client, batch["id"], timeout_s=10)
        assert wait_finished(client, holder)["status"] == "succeeded"
        too_long = client.post("/jobs", json={"question": "x", "expires_after_s": 10**9})

    for job in expired:
        assert job["status"] == "expired", job
        assert job["error"]["type"] == "JobExpired" and job["error"]["code"] == 408
        assert job["attempts"] == 0 and job["started_at"] is None
    assert late["status"] == "expired" and late["counts"]["expired"] == 3
    assert [r["question"] for r in lm_requests(lm)] == [next(r["question"] for r in lm_requests(lm))]
    assert too_long.status_code == 422 and "expires_after_s" in too_long.json()["message"]


def test_a_worker_killed_while_holding_slots_gives_them_back_within_its_lease(capacity_stack: MakeStack) -> None:
    stack, _lm = capacity_stack(LM_MAX_IN_FLIGHT="2")
    doomed = stack.start_worker(name="worker-doomed")
    stack.start_api()
    with stack.client() as client:
        held = [
            client.post("/jobs", json={"question": unique(f"[lm:delay_s=60] held {i}")}).json()["id"] for i in range(2)
        ]
        wait_for(lambda: default_model(client)["in_flight"] == 2, 10, "both slots to be held")
        doomed.stop(signal.SIGKILL)
        for job_id in held:  # so that the reaper does not run them again and take the slots back
            client.post(f"/jobs/{job_id}/cancel")
        # JOB_LEASE_S is 3 in the test stacks.
        wait_for(lambda: default_model(client)["in_flight"] == 0, 3 + 1, "the dead worker's slots to be given back")
        stack.start_worker(name="worker-next")
        job = client.post("/jobs", params={"wait": 30}, json={"question": unique("after the kill")}).json()

    assert job["status"] == "succeeded"


def test_two_api_keys_share_bulk_turns_whatever_their_batch_counts(capacity_stack: MakeStack) -> None:
    """Turns go round the keys first, then round each key's batches: three batches of one key do not get three
    times the turns of the other key's one."""
    key_a, key_b = f"dj_a_{uuid.uuid4().hex}", f"dj_b_{uuid.uuid4().hex}"
    digests = ",".join(
        f"{name}:{hashlib.sha256(key.encode()).hexdigest()}" for name, key in (("a", key_a), ("b", key_b))
    )
    stack, lm = capacity_stack("--ttft-s", "0.05", LM_MAX_IN_FLIGHT="1", API_KEYS=digests)
    stack.start_services()
    with stack.client() as client:
        a = {"Authorization": f"Bearer {key_a}"}
        b = {"Authorization": f"Bearer {key_b}"}
        for n in range(3):
            items = [{"question": unique(f"keya{n} {i}")} for i in range(20)]
            assert client.post("/batches", json={"items": items}, headers=a).status_code == 202
        lone = client.post(
            "/batches", json={"items": [{"question": unique(f"keyb {i}")} for i in range(20)]}, headers=b
        ).json()
        wait_for(
            lambda: client.get(f"/batches/{lone['id']}", headers=b).json()["status"] == "completed",
            90,
            "key b's batch to complete",
        )

    owners = ["b" if "keyb" in r["question"] else "a" for r in lm_requests(lm)]
    # Until key b's batch is done, every other turn is key b's.
    last_b = len(owners) - 1 - owners[::-1].index("b")
    window = owners[owners.index("b") : last_b + 1]
    assert window.count("b") == 20 and window.count("a") <= 21, "".join(owners)


def test_an_lm_that_is_down_pauses_instead_of_burning_every_queued_jobs_attempts(capacity_stack: MakeStack) -> None:
    # Room for the job that probes the LM after each pause: each probe that fails costs it an attempt.
    stack, lm = capacity_stack(
        LM_MAX_IN_FLIGHT="4", LM_BREAKER_FAILURES="3", RETRY_BASE_S="0.5", RETRY_MAX_S="2", JOB_MAX_ATTEMPTS="10"
    )
    stack.start_worker()
    stack.start_api()
    with stack.client() as client:
        httpx.post(f"{lm}/_outage", json={"status": 500, "for_s": 8})
        ids = [client.post("/jobs", json={"question": unique(f"while it is down {i}")}).json()["id"] for i in range(20)]
        jobs = [wait_finished(client, job_id, timeout_s=90) for job_id in ids]
        model = default_model(client)

    assert [job["status"] for job in jobs] == ["succeeded"] * 20, [job["error"] for job in jobs if job["error"]]
    # The calls that found it down cost their jobs an attempt; the jobs that waited behind the pause did not.
    failed_calls = sum(1 for r in lm_requests(lm) if r.get("outage"))
    assert failed_calls < 20, failed_calls
    assert sum(job["attempts"] - 1 for job in jobs) == failed_calls
    assert max(job["attempts"] for job in jobs) < 10, "JOB_MAX_ATTEMPTS is 10"
    assert model["pauses_total"] >= 1 and model["failures_total"] == failed_calls
