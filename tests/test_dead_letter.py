"""A job that kills its worker on every attempt, on the real stack, with a supervisor restarting the workers.

The poison is a test-only program (tests/programs/poison.py) registered through PROGRAMS, as a user's
own program is: a question containing `POISON` makes it SIGKILL its own worker process, as the
out-of-memory killer does. The test plays the supervisor (systemd, Kubernetes, compose's `restart:`)
and starts a worker again each time one dies, while normal questions keep coming.

Before dead-lettering, such a job ran 5 times (JOB_MAX_ATTEMPTS), killing 5 workers, and failed
`WorkerLost` (code 500) when started a sixth time. Now it runs JOB_MAX_DELIVERIES (3) times and the
reaper that finds the third loss ends it `DeadLettered` (code 508); its last delivery runs alone in its
worker (worker/isolation.py), so the batch item that ran beside the poison item is not dead-lettered
with it.
"""

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from core import keys
from harness.processes import ROOT, Proc
from harness.sse_client import read_events
from harness.webhook_receiver import Receiver
from tests.conftest import Stack
from tests.programs.poison import POISON
from tests.test_jobs import unique, wait_finished
from tests.test_metrics import scrape, value
from tests.test_webhooks import SECRET, WEBHOOK_ENV
from worker.isolation import ANOTHER_RUNS_ALONE, RUNS_ALONE

pytestmark = pytest.mark.e2e

TERMINAL = ("succeeded", "failed", "cancelled", "expired")


class Supervisor:
    """Starts a stack's workers again whenever one dies, as systemd or Kubernetes would, and notes each death."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self._workers: dict[str, Proc | None] = {}
        self._options: dict[str, dict[str, Any]] = {}
        self.deaths: list[str] = []  # the name of each worker that died, in order
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start_worker(self, name: str, **options: Any) -> None:
        self._options[name] = options
        self._workers[name] = self._stack.start_worker(name=name, **options)

    def died(self, name: str) -> int:
        return self.deaths.count(name)

    def __enter__(self) -> "Supervisor":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)
        if self.error is not None:
            raise self.error

    def _watch(self) -> None:
        try:
            while not self._stop.wait(0.1):
                for name, proc in list(self._workers.items()):
                    if proc is None or proc.popen.poll() is not None:
                        if proc is not None:
                            self.deaths.append(name)
                        self._restart(name)
        except BaseException as e:
            self.error = e

    def _restart(self, name: str) -> None:
        try:
            self._workers[name] = self._stack.start_worker(name=name, **self._options[name])
        except RuntimeError:
            # It died before it said it was ready: a bulk worker picks items as soon as it can.
            self.deaths.append(name)
            self._workers[name] = None


@pytest.fixture
def poison_stack(make_stack: Callable[..., Stack], tmp_path: Path) -> Stack:
    """A stack that serves `poison` besides `qa`, its artifact built as a user builds one; nothing started."""
    stack = make_stack()
    entry = {"module": "tests.programs.poison:Poison", "artifact": str(tmp_path / "poison.json")}
    stack.extra_env = {"PROGRAMS": json.dumps({"poison": entry})}
    subprocess.run(
        [sys.executable, "-m", "program.optimize", "poison", "--optimizer", "none"],
        cwd=ROOT,
        env={**os.environ, **stack.env},
        check=True,
        capture_output=True,
    )
    return stack


class NormalQuestions:
    """Questions for `qa` submitted one every `every_s` while a test waits for something else."""

    def __init__(self, client: httpx.Client, every_s: float = 0.5) -> None:
        self._client = client
        self._every_s = every_s
        self.ids: list[str] = []

    def until(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
            answer = self._client.post("/jobs", json={"question": unique("normal")})
            assert answer.status_code == 202, answer.text
            self.ids.append(answer.json()["id"])
            time.sleep(self._every_s)  # the pace of the traffic, not a wait for anything


def ended(client: httpx.Client, *job_ids: str) -> Callable[[], bool]:
    return lambda: all(client.get(f"/jobs/{job_id}").json()["status"] in TERMINAL for job_id in job_ids)


def poison_input(name: str) -> dict[str, str]:
    return {"question": unique(f"{POISON} {name}")}


def test_a_job_that_kills_its_worker_every_time_is_dead_lettered_while_other_jobs_keep_running(
    poison_stack: Stack,
) -> None:
    stack = poison_stack
    stack.extra_env.update(WEBHOOK_ENV)
    r = stack.redis()
    with Receiver() as receiver, Supervisor(stack) as supervisor:
        supervisor.start_worker("worker")
        supervisor.start_worker("worker-bulk", queues="bulk")
        stack.start_api()
        with stack.client() as client:
            body = {"input": poison_input("interactive"), "webhook_url": receiver.url}
            job = client.post("/programs/poison/jobs", json=body).json()
            fine = [{"input": {"question": unique("fine")}}, {"input": {"question": unique("fine")}}]
            batch = client.post(
                "/programs/poison/batches", json={"items": [fine[0], {"input": poison_input("item")}, fine[1]]}
            ).json()
            item_id = f"{batch['id']}-1"
            traffic = NormalQuestions(client)

            traffic.until(ended(client, job["id"], item_id), 240, "both poison jobs to end")

            poisoned = [client.get(f"/jobs/{job_id}").json() for job_id in (job["id"], item_id)]
            deaths = {name: supervisor.died(name) for name in ("worker", "worker-bulk")}
            # Nothing of them is left to deliver: no lease, no place in a queue or in the batch's turn.
            assert r.zscore(keys.LEASES, job["id"]) is None and r.zscore(keys.LEASES, item_id) is None
            assert r.zscore(keys.queued("interactive"), job["id"]) is None
            assert job["id"] not in str(r.lrange("interactive", 0, -1))
            assert r.zcard(keys.batch_retries(batch["id"])) == 0
            # Jobs after them run once each, on workers nothing kills any more.
            after = [client.post("/jobs", json={"question": unique("after")}).json()["id"] for _ in range(5)]
            others = [wait_finished(client, job_id, timeout_s=120) for job_id in [*traffic.ids, *after]]
            neighbours = [client.get(f"/jobs/{batch['id']}-{index}").json() for index in (0, 2)]
            finished_batch = client.get(f"/batches/{batch['id']}").json()
            results = client.get(f"/batches/{batch['id']}/results").json()["items"]
            listed = client.get("/jobs", params={"status": "failed", "error": "DeadLettered"}).json()
            listed_items = client.get("/jobs", params={"batch_id": batch["id"], "status": "failed"}).json()
            events = read_events(client, job["id"]).events
            (hook,) = receiver.wait_for(1, 30)
            samples = scrape(client)

    assert deaths == {"worker": 3, "worker-bulk": 3}
    assert {name: supervisor.died(name) for name in deaths} == deaths, "no worker died after they ended"
    for record in poisoned:
        assert record["status"] == "failed"
        assert record["attempts"] == record["deliveries_lost"] == 3
        assert record["error"] == {
            "type": "DeadLettered",
            "message": "not delivered again: the worker running it was lost 3 times (killed, out of memory, "
            "crashed, or stalled past its lease; JOB_MAX_DELIVERIES is 3)",
            "retryable": False,
            "code": 508,
            "attempts": 3,
        }
    # Its stream: every start, every loss counted, then the failure carrying the record, like any other. Its last
    # delivery waited for the other jobs in its worker to end, if any ran (`waiting`, worker/isolation.py).
    waits = {e["data"]["reason"] for e in events if e["data"].get("status") == "waiting"}
    assert waits <= {RUNS_ALONE, ANOTHER_RUNS_ALONE}, waits
    statuses = [
        (e["data"]["status"], e["data"].get("attempt", e["data"].get("deliveries_lost")))
        for e in events[:-1]
        if e["data"]["status"] != "waiting"
    ]
    assert statuses == [
        ("queued", None),
        ("running", 1),
        ("retrying", 1),
        ("running", 2),
        ("retrying", 2),
        ("running", 3),
    ]
    assert events[-1]["type"] == "error"
    # The record as it ended; only its webhook's delivery has moved on since.
    assert {**events[-1]["data"], "webhook": None} == {**poisoned[0], "webhook": None}
    payload = Webhook(SECRET).verify(hook.body, hook.headers)
    assert payload["type"] == "job.failed" and payload["data"]["error"]["type"] == "DeadLettered"
    assert value(samples, "dspy_jobs_finished_total", program="poison", status="failed") == 2
    # The batch counts it once, as failed, beside its neighbours.
    assert finished_batch["status"] == "completed"
    assert finished_batch["counts"] == {**finished_batch["counts"], "succeeded": 2, "failed": 1, "running": 0}
    assert [i["status"] for i in results] == ["succeeded", "failed", "succeeded"]
    assert results[1]["error"]["type"] == "DeadLettered"
    # An operator finds them by their error: the job among jobs, the item among its batch's failed items.
    assert [j["id"] for j in listed["data"]] == [job["id"]] and listed["total"] == 1
    assert [j["id"] for j in listed_items["data"]] == [item_id]
    assert [o["status"] for o in others] == ["succeeded"] * len(others)
    # A job running beside the poison job when it killed its worker lost a delivery too; the poison job's last
    # delivery ran alone (worker/isolation.py), so no neighbour lost its last one to it.
    assert max(o["deliveries_lost"] for o in [*others, *neighbours]) < 3
    assert [(o["attempts"], o["deliveries_lost"]) for o in others[-len(after) :]] == [(1, 0)] * len(after)
