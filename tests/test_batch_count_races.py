"""A batch's counts under every interleaving of the paths that end its items, against the real Redis functions.

Item cancel and batch cancel (the API), picking, starting, finishing and
retrying items (bulk workers), a worker lost mid-item and the reaper putting
it back (or ending it dead-lettered, at its `JOB_MAX_DELIVERIES`-th loss), an
item that lost a delivery claimed to wait until it can run alone, a stale
worker writing after it was fenced, and the batch's
deadline: Hypothesis runs them in random orders on a real redis-server,
through the same Python calls the API and the workers make, and after each
step checks what clients rely on:

- the counts are never negative and add up to `total`;
- they are what the items themselves say (each item's status as
  `GET /batches/{id}/results` reads it);
- the batch has ended exactly when every item has, and ends once.

Regression: cancelling an unpicked item, then its batch, counted the item
twice (`queued: -1`), and the batch could end while items still ran.
"""

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Iterator
from types import SimpleNamespace
from typing import TypeVar

import pytest
import redis.asyncio as aioredis
from fastapi import HTTPException
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import worker.job_store
from api import batch_store, job_store
from api.auth import OPEN
from api.schemas import BatchOptions
from core import keys, scripts
from core.batches import TERMINAL_BATCH_STATUSES, BatchStatus, item_fields
from core.capacity import endpoint_for
from core.events import EventType
from core.jobs import JobStatus
from core.refusals import Refusal
from core.settings import Settings
from harness.processes import Proc, start_redis
from worker.job_store import JobStore

pytestmark = pytest.mark.e2e

T = TypeVar("T")
LEASE_S = 15.0
MAX_DELIVERIES = 2
DEADLINE_S = 500_000.0


class Clock:
    """The workers' and the reaper's time: real time plus how far a rule has moved it on."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    proc, url = start_redis("redis-batch-races")
    yield url
    if isinstance(proc, Proc):
        proc.stop()


class BatchRaces(RuleBasedStateMachine):
    url: str
    clock: Clock

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = self.run(self._client())
        self.run(self.redis.flushdb())
        self.clock.offset = 0.0
        self.settings = Settings(redis_url=self.url, job_lease_s=LEASE_S, job_max_deliveries=MAX_DELIVERIES)
        self.store = JobStore(self.redis, self.settings)
        self.endpoint = endpoint_for(self.settings, None).id
        self.tokens = (f"t{n}" for n in itertools.count())
        self.picked: list[tuple[str, int, str, dict[str, str]]] = []
        self.running: dict[str, str] = {}  # item id -> the token of the attempt that runs it
        self.losses: dict[str, int] = {}  # item id -> attempts of it whose worker was lost
        self.claimed: dict[str, str] = {}  # item id -> the token of a worker holding it until it can run alone
        self.fenced: list[tuple[str, str]] = []  # (item id, token) of attempts another has taken over
        self.finished_at: str | None = None

    async def _client(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(self.url, decode_responses=True)

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.redis.aclose())
        self.loop.close()

    # ---- the batch -------------------------------------------------------------------

    @initialize(size=st.integers(1, 5))
    def submit(self, size: int) -> None:
        self.batch_id = uuid.uuid4().hex
        self.total = size
        items = [{"question": f"q{i}", "custom_id": f"c{i}"} for i in range(size)]
        created = self.clock.time()
        options = BatchOptions(expires_after_s=DEADLINE_S)
        self.run(batch_store.create_batch(self.redis, self.settings, self.batch_id, "qa", items, options, created))

    def batch(self) -> dict[str, str]:
        return self.run(batch_store.read_batch(self.redis, self.batch_id))

    def item(self, index: int) -> str:
        return f"{self.batch_id}-{index}"

    # ---- the API ---------------------------------------------------------------------

    @rule(index=st.integers(0, 4))
    def cancel_item(self, index: int) -> None:
        if index >= self.total:
            return
        try:
            self.run(job_store.cancel_job(self.redis, self.settings, self.item(index), OPEN))
        except HTTPException as e:
            assert e.status_code == 409, e.detail

    @rule()
    def cancel_batch(self) -> None:
        try:
            self.run(batch_store.request_cancel(self.redis, self.settings, self.batch_id, OPEN))
        except HTTPException as e:
            assert e.status_code == 409, e.detail

    # ---- bulk workers ----------------------------------------------------------------

    def _pick(self, now: float) -> None:
        found = self.run(
            scripts.acall(
                self.redis,
                "bulk_pick",
                [keys.bulk_owners(self.endpoint)],
                [repr(now), LEASE_S, 16, keys.bulk_batches(self.endpoint, "%s"), keys.batch("%s")],
            )
        )
        if found:
            _, item_id, index, raw_input, *pairs = (str(v) for v in found)
            self.picked.append((item_id, int(index), raw_input, dict(zip(pairs[::2], pairs[1::2], strict=True))))

    @rule()
    def pick(self) -> None:
        self._pick(self.clock.time())

    @rule()
    def pick_after_a_pick_lease_ran_out(self) -> None:
        """A worker picked an item and died before starting it: after the pick's lease, it is picked again."""
        self._pick(self.clock.time() + 2 * LEASE_S)

    @precondition(lambda self: self.picked)
    @rule(data=st.data(), alone=st.booleans())
    def start(self, data: st.DataObject, alone: bool) -> None:
        """`alone`: nothing else runs in the worker; an item that lost a delivery is claimed instead if not."""
        item_id, index, raw_input, batch = self.picked.pop(data.draw(st.integers(0, len(self.picked) - 1)))
        fields = item_fields(self.batch_id, index, raw_input, batch) if raw_input else {}
        self._start(item_id, next(self.tokens), fields, alone)

    @precondition(lambda self: self.claimed)
    @rule(data=st.data())
    def start_alone(self, data: st.DataObject) -> None:
        """A claimed item's turn to run alone comes."""
        item_id = data.draw(st.sampled_from(sorted(self.claimed)))
        self._start(item_id, self.claimed.pop(item_id), {}, True)

    def _start(self, item_id: str, token: str, fields: dict[str, str], alone: bool) -> None:
        retries = keys.batch_retries(self.batch_id)
        taken = self.run(self.store.start_item(item_id, token, "w", fields, retries, alone, {"status": "waiting"}))
        if taken.code > 0:
            self.running[item_id] = token
        elif taken.code == 0:
            assert not alone and self.losses.get(item_id), "only an item on its last delivery waits to run alone"
            self.claimed[item_id] = token
        elif taken.code == Refusal.BATCH_CANCELLED:  # as worker/job_runner.py `_refused` does
            updates = {"status": JobStatus.cancelled.value, "finished_at": repr(self.clock.time())}
            self.run(self.store.end(item_id, "", taken.fields, EventType.error, updates))
        elif taken.code == Refusal.EXPIRED:
            self.run(self.store.expire(item_id, "", taken.fields))

    def _running(self, data: st.DataObject) -> tuple[str, str]:
        item_id = data.draw(st.sampled_from(sorted(self.running)))
        return item_id, self.running.pop(item_id)

    @precondition(lambda self: self.running)
    @rule(data=st.data(), status=st.sampled_from([JobStatus.succeeded, JobStatus.failed]))
    def finish(self, data: st.DataObject, status: JobStatus) -> None:
        item_id, token = self._running(data)
        self._end(item_id, token, status)

    def _end(self, item_id: str, token: str, status: JobStatus) -> int:
        fields = self.run(job_store.read_job(self.redis, item_id)) or {}
        updates = {"status": status.value, "finished_at": repr(self.clock.time())}
        if status == JobStatus.succeeded:
            updates |= {"result": '{"answer":"a"}', "usage": '{"prompt_tokens":3,"completion_tokens":2}'}
            return self.run(self.store.end(item_id, token, fields, EventType.result, updates))
        updates["error"] = '{"type":"X","message":"m","retryable":false}'
        return self.run(self.store.end(item_id, token, fields, EventType.error, updates))

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        item_id, token = self._running(data)
        self.run(self.store.retry(item_id, token, self.clock.time(), {"status": "retrying"}))

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def lose_the_worker(self, data: st.DataObject) -> None:
        """Its worker dies; the reaper finds the lease ran out and puts the item back in its batch, or ends it
        failed at its last allowed loss."""
        item_id, token = self._running(data)
        self.fenced.append((item_id, token))
        if self._status(item_id) != JobStatus.running:  # cancelled meanwhile: nothing to put back
            assert self._lose(item_id) == 0
            return
        self.losses[item_id] = self.losses.get(item_id, 0) + 1
        code = self._lose(item_id)
        assert code == (3 if self.losses[item_id] == MAX_DELIVERIES else 2), (item_id, self.losses[item_id], code)

    def _status(self, item_id: str) -> JobStatus:
        return JobStatus(str(self.run(self.redis.hget(keys.job(item_id), "status"))))

    def _lose(self, item_id: str) -> int:
        return self.run(self.store.requeue_lost(item_id, self.clock.time() + 2 * LEASE_S, {"status": "retrying"}))

    @precondition(lambda self: self.claimed)
    @rule(data=st.data())
    def lose_a_worker_before_it_started_the_item(self, data: st.DataObject) -> None:
        """The worker that claimed an item to run it alone dies first: it goes back, no delivery lost."""
        item_id = data.draw(st.sampled_from(sorted(self.claimed)))
        del self.claimed[item_id]
        waiting = self._status(item_id) == JobStatus.queued  # not cancelled meanwhile
        assert self._lose(item_id) == (2 if waiting else 0)

    @precondition(lambda self: self.fenced)
    @rule(data=st.data(), status=st.sampled_from([JobStatus.succeeded, JobStatus.failed]))
    def a_fenced_worker_wakes_and_writes(self, data: st.DataObject, status: JobStatus) -> None:
        item_id, token = self.fenced.pop(data.draw(st.integers(0, len(self.fenced) - 1)))
        assert self._end(item_id, token, status) < 0, "a fenced attempt's end must be refused"

    @rule()
    def deadline_passes(self) -> None:
        """Past the batch's deadline: the reaper ends the items no worker picked; the others expire at start."""
        self.clock.offset = max(self.clock.offset, 2 * DEADLINE_S)
        self.run(scripts.acall(self.redis, "batch_expire", [keys.batch(self.batch_id)], [repr(self.clock.time())]))

    # ---- what clients see ------------------------------------------------------------

    def item_statuses(self) -> list[JobStatus]:
        batch = self.batch()
        return [JobStatus(i["status"]) for i in self.run(batch_store.read_items(self.redis, batch, 0, self.total))]

    @invariant()
    def counts_add_up_to_what_the_items_say(self) -> None:
        batch = self.batch()
        counts = {status: int(batch.get(f"n_{status.value}", 0)) for status in JobStatus}
        assert all(n >= 0 for n in counts.values()), counts
        assert sum(counts.values()) == self.total, counts
        statuses = self.item_statuses()
        assert counts == {status: statuses.count(status) for status in JobStatus}, (counts, statuses)

    @invariant()
    def the_batch_ends_when_its_last_item_does_and_once(self) -> None:
        batch = self.batch()
        ended = BatchStatus(batch["status"]) in TERMINAL_BATCH_STATUSES
        assert ended == all(status.is_terminal for status in self.item_statuses()), batch
        if self.finished_at is not None:
            assert batch.get("finished_at") == self.finished_at, "a batch ends once"
        elif ended:
            self.finished_at = batch["finished_at"]


@pytest.fixture
def races(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """BatchRaces on the test's Redis, with a clock of its own that the worker's job store reads too."""
    clock = Clock()
    monkeypatch.setattr(worker.job_store, "time", SimpleNamespace(time=clock.time))
    BatchRaces.url, BatchRaces.clock = redis_url, clock


@pytest.fixture
def machine(races: None) -> Iterator["BatchRaces"]:
    """One BatchRaces, for a path taken step by step."""
    machine = BatchRaces()
    try:
        yield machine
    finally:
        machine.teardown()


@pytest.mark.usefixtures("races")
def test_batch_counts_add_up_under_any_interleaving_of_cancel_expiry_finish_and_reaper() -> None:
    run_state_machine_as_test(
        BatchRaces,
        settings=settings(
            max_examples=300, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )


def test_cancelling_the_last_unpicked_item_then_the_batch_after_the_others_were_picked(machine: BatchRaces) -> None:
    """Regression, found by the state machine: the batch's cancel settled 0 unpicked items, and HINCRBY refused
    Lua's `-0`, so the cancel failed."""
    machine.submit(size=3)
    machine.cancel_item(index=2)
    machine.pick()
    machine.pick()
    machine.cancel_batch()
    machine.counts_add_up_to_what_the_items_say()
    assert machine.batch()["status"] == "cancelling"


def test_an_item_picked_between_the_apis_two_reads_is_read_from_its_record(machine: BatchRaces) -> None:
    """Regression: `GET /jobs/{item}` read no record, a worker then picked and started the item, and the look
    at its batch saw that a record existed and answered 404 (an optimization was 404 right after its 202)."""
    machine.submit(size=1)
    item_id = machine.item(0)
    assert machine.run(machine.redis.hgetall(keys.job(item_id))) == {}  # the API's first read
    machine.pick()
    for picked_id, index, raw_input, batch in machine.picked:
        machine._start(picked_id, next(machine.tokens), item_fields(machine.batch_id, index, raw_input, batch), False)

    record = machine.run(job_store.item_record(machine.redis, item_id))  # its second

    assert record is not None
    assert record["status"] == JobStatus.running.value


def test_an_item_that_lost_a_delivery_waits_to_run_alone_then_is_dead_lettered_and_counted_once(
    machine: BatchRaces,
) -> None:
    """The new paths, step by step (2 deliveries allowed): an item lost once, on its last delivery, is claimed
    (not started) while its worker runs another, starts once alone, and its second loss ends it failed,
    `DeadLettered`, counted once beside its neighbour."""
    machine.submit(size=2)
    machine.pick()
    machine.pick()
    for item_id, index, raw_input, batch in machine.picked:
        machine._start(item_id, next(machine.tokens), item_fields(machine.batch_id, index, raw_input, batch), False)
    lost, other = machine.item(0), machine.item(1)
    assert set(machine.running) == {lost, other}
    assert machine._lose(lost) == 2
    machine.losses[lost] = 1
    machine.clock.offset += 2 * LEASE_S
    machine.picked.clear()
    machine.pick()
    assert [p[0] for p in machine.picked] == [lost]

    machine._start(lost, next(machine.tokens), {}, False)
    assert lost in machine.claimed and machine._status(lost) == JobStatus.queued
    machine._start(lost, machine.claimed.pop(lost), {}, True)
    assert lost in machine.running
    machine.clock.offset += 2 * LEASE_S
    assert machine._lose(lost) == 3
    assert machine._end(other, machine.running[other], JobStatus.succeeded) > 0

    machine.counts_add_up_to_what_the_items_say()
    machine.the_batch_ends_when_its_last_item_does_and_once()
    batch = machine.batch()
    assert (batch["status"], batch["n_failed"], batch["n_succeeded"]) == ("completed", "1", "1")
    record = machine.run(job_store.read_job(machine.redis, lost)) or {}
    assert (record["status"], record["deliveries_lost"], record["attempts"]) == ("failed", "2", "2")
    assert '"type":"DeadLettered"' in record["error"]
