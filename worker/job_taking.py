"""Taking a job: from its message (or its pick from a batch) to the start of an attempt, or its refusal.

- An interactive job's message reaches a Celery thread, which hands the job
  to the process's event loop (`take`) and waits only until it has started:
  running jobs hold no thread. A batch item is picked by the bulk loop
  (worker/bulk.py) only once it has a slot (`start_item`).
- The job first gets a slot of its model's endpoint for its first LM call
  (worker/capacity.py). If none is free it is claimed (leased to this
  worker, still `queued`, with a `waiting` event saying why) and waits, with
  no LM timeout and no attempt spent, until its slot comes or its deadline
  (`expires_at`) passes: then it ends `expired`.
- Starting counts the attempt and writes the `running` event
  (worker/job_store.py); the attempt then runs (worker/job_attempt.py).
- A job on its last allowed delivery (its worker died running it every
  time but once) starts only when nothing else runs in this process, and
  nothing else starts meanwhile (worker/isolation.py): claimed, it waits for
  its turn without holding a slot; other jobs wait for it the same way.
- A job refused on the way (finished, another worker's, its batch
  cancelled, past its deadline, a model no longer allowed) is dropped or
  ended as the refusal says (core/refusals.py).
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import redis.asyncio as aioredis

from core import keys
from core.events import EventType
from core.jobs import JobError, JobStatus, deliveries_lost
from core.refusals import Refusal
from core.settings import Settings
from worker.capacity import Capacity, CapacityTimeout, Slot
from worker.isolation import ANOTHER_RUNS_ALONE, RUNS_ALONE, Isolation, runs_alone
from worker.job_attempt import JobAttempts
from worker.job_store import JobStore, Taken
from worker.metrics import record_job_outcome
from worker.runs import Run, Send, waiting_event

log = logging.getLogger(__name__)


# Starts a job's attempt: (alone, the `waiting` event if it must wait to run alone) -> what the start found.
Starting = Callable[[bool, dict[str, Any]], Awaitable[Taken]]


class _Refused(Exception):
    def __init__(self, taken: Taken) -> None:
        super().__init__(taken.code)
        self.taken = taken


class JobTaking:
    def __init__(
        self,
        settings: Settings,
        client: aioredis.Redis,
        capacity: Capacity,
        store: JobStore,
        attempts: JobAttempts,
        send: Send,
        worker: str,
        runs: dict[str, Run],
        first_call_estimate: Callable[[], int],
        isolation: Isolation,
    ) -> None:
        self._settings = settings
        self._redis = client
        self._capacity = capacity
        self.store = store
        self._attempts = attempts
        self._send = send
        self.worker = worker
        self.runs = runs
        self.first_call_estimate = first_call_estimate
        self._isolation = isolation
        self.stopping = False

    async def take(self, job_id: str, model: str | None) -> None:
        """An interactive job from its queue; returns once it has started or turned out not to be ours."""
        if self.stopping:
            await self._send(job_id, model, 0.0)
            return
        run = Run(job_id, uuid.uuid4().hex, "interactive", model or None)
        if run.model is not None and run.model not in self._capacity.models:
            await self._refuse_model(run)
            return
        run.task = asyncio.current_task()
        self.runs[run.token] = run

        async def claim(reason: str, paused_until: float | None) -> None:
            taken = await self.store.claim(
                job_id, run.token, self.worker, waiting_event(run, reason, paused_until, self._settings.lm_model)
            )
            if taken.code < 0:
                raise _Refused(taken)
            run.leased, run.fields = True, taken.fields
            if taken.fields.get("expires_at"):
                run.deadline = time.monotonic() + float(taken.fields["expires_at"]) - time.time()
            log.info("job %s waits to start (%s)", job_id, reason)

        try:
            if not self._isolation.open:
                await claim(ANOTHER_RUNS_ALONE, None)
                await self._isolation.opened()
            slot = await self._capacity.acquire(
                run.model,
                run.priority,
                self.first_call_estimate(),
                holder=run.token,
                deadline=lambda: run.deadline,
                on_wait=claim,
            )
        except _Refused as refused:
            self.runs.pop(run.token, None)
            await self._refused(run, refused.taken)
            return
        except CapacityTimeout:
            self.runs.pop(run.token, None)
            await self._expire(run, run.fields)
            return
        except asyncio.CancelledError:
            self.runs.pop(run.token, None)
            await self._let_go(run)
            return

        def starting(alone: bool, waiting: dict[str, Any]) -> Awaitable[Taken]:
            return self.store.start(job_id, run.token, self.worker, alone, waiting)

        # Cancelled while it waited to start: `_start` gave it back or let it go.
        with contextlib.suppress(asyncio.CancelledError):
            await self._start(run, slot, starting)

    async def start_item(self, item_id: str, fields: dict[str, str], retries: str, slot: Slot) -> None:
        """A batch item picked by the bulk loop with `slot`: started, and run."""
        run = Run(item_id, uuid.uuid4().hex, "bulk", fields.get("model") or None)
        self.runs[run.token] = run

        def starting(alone: bool, waiting: dict[str, Any]) -> Awaitable[Taken]:
            return self.store.start_item(item_id, run.token, self.worker, fields, retries, alone, waiting)

        await self._start(run, slot, starting)

    async def _start(self, run: Run, slot: Slot, starting: Starting) -> None:
        try:
            taken = await self._starting(run, slot, starting)
        except BaseException:
            self.runs.pop(run.token, None)
            await asyncio.shield(self._release(run))
            if run.leased:
                await asyncio.shield(self._let_go(run))
            raise
        if taken.code <= 0:
            self.runs.pop(run.token, None)
            await self._release(run)
            await self._refused(run, taken)
            return
        run.leased, run.fields, run.attempts = True, taken.fields, taken.code
        self._attempts.start(run)

    async def _starting(self, run: Run, slot: Slot, starting: Starting) -> Taken:
        """The start of the job's attempt, when the process's isolation allows it (worker/isolation.py).
        `run.slot` is the slot its first LM call gets, if it still holds one."""
        gate = self._isolation
        run.slot = slot
        if not gate.open:
            # A job on its last delivery runs here, or waits to: wait for it, leaving the slot to others.
            await self._release(run)
            await gate.opened()
        alone = gate.reserve()
        try:
            taken = await starting(alone, waiting_event(run, RUNS_ALONE, None, self._settings.lm_model))
        except BaseException:
            gate.unreserve(alone)
            raise
        if taken.code != 0:
            if taken.code > 0:
                run.lone = runs_alone(deliveries_lost(taken.fields), self._settings.job_max_deliveries)
                gate.started(alone, run.lone)
            else:
                gate.unreserve(alone)
            return taken
        # On its last delivery, and other jobs run here: claimed instead, it waits to run alone.
        gate.unreserve(alone)
        run.leased, run.fields = True, taken.fields
        await self._release(run)
        log.info("job %s lost its worker %d time(s); it waits to run alone", run.job_id, deliveries_lost(run.fields))
        await gate.run_alone()
        try:
            taken = await starting(True, {})
        except BaseException:
            gate.ended(lone=True)
            raise
        run.lone = taken.code > 0
        if not run.lone:
            gate.ended(lone=True)
        return taken

    async def _release(self, run: Run) -> None:
        """Give back the slot the job holds for its first LM call, unused."""
        slot, run.slot = run.slot, None
        if slot is not None:
            await self._capacity.release(slot, "unused")

    async def _refuse_model(self, run: Run) -> None:
        """A job whose model this deployment no longer allows (LM_ALLOWED_MODELS changed since it was accepted)."""
        fields = cast(dict[str, str], await self._redis.hgetall(keys.job(run.job_id)))
        if not fields:
            return
        error = JobError(
            type="ModelNotAllowed",
            message=f"model {run.model!r} is not allowed here any more (LM_MODEL, LM_ALLOWED_MODELS)",
            retryable=False,
            code=400,
        )
        updates = {"status": JobStatus.failed.value, "error": error.model_dump_json(), "finished_at": repr(time.time())}
        if await self.store.end(run.job_id, "", fields, EventType.error, updates, unstarted=True) > 0:
            log.warning("job %s failed: %s", run.job_id, error.message)

    async def _refused(self, run: Run, taken: Taken) -> None:
        job_id = run.job_id
        if taken.code == Refusal.NO_JOB:
            log.warning("job %s: no record (expired or never stored); dropping the message", job_id)
        elif taken.code == Refusal.FINISHED:
            log.info("job %s: already %s; not running it again", job_id, taken.status)
            await record_job_outcome(self._redis, job_id, self._settings.lm_model)
        elif taken.code == Refusal.LEASED:
            log.info("job %s: another worker holds it; dropping this delivery", job_id)
        elif taken.code == Refusal.BATCH_CANCELLED:
            updates = {"status": JobStatus.cancelled.value, "finished_at": repr(time.time())}
            await self.store.end(job_id, run.token if run.leased else "", taken.fields, EventType.error, updates)
        elif taken.code == Refusal.EXPIRED:
            await self._expire(run, taken.fields)

    async def _expire(self, run: Run, fields: dict[str, str]) -> None:
        if await self.store.expire(run.job_id, run.token if run.leased else "", fields) > 0:
            log.info("job %s expired before it started", run.job_id)

    async def _let_go(self, run: Run) -> None:
        """A claimed job this worker stops waiting for: given back if it still holds it."""
        if run.stop == "shutdown" and run.leased:
            with contextlib.suppress(Exception):
                if await asyncio.shield(self.store.unclaim(run.job_id, run.token)) == 1:
                    await self._send(run.job_id, run.model, 0.0)
            log.info("job %s: given back unstarted (this worker is stopping)", run.job_id)
        elif run.stop is not None:
            log.info("job %s: stopped waiting (%s)", run.job_id, run.stop)
            await asyncio.shield(record_job_outcome(self._redis, run.job_id, self._settings.lm_model))
