"""The reaper every worker runs: jobs whose worker was lost run again, jobs past their deadline expire.

- **A worker died holding a job** (claimed and waiting, or running): its
  lease runs out. The job goes back to waiting: an interactive job's task is
  sent again, a batch item goes back to its batch's turn (core/lua/jobs.lua
  `job_requeue_lost`). The broker's visibility timeout plays no part.
- **A job that kills its worker every time** (a poison input, a program
  that runs out of memory): a running job whose lease ran out lost a
  delivery, and the record counts it (`deliveries_lost`). The reaper that
  finds the `job_max_deliveries`-th loss ends the job `failed`,
  `DeadLettered`, in that same step, with its `error` event, its metrics and
  its webhook, instead of delivering it again. A job claimed and still
  waiting for LM capacity never ran: losing it counts for nothing. Its last
  delivery runs alone in its worker (worker/isolation.py), so that the
  death that ends it is its own, not a neighbour's.
- **A worker died after taking an interactive job's message and before
  claiming it.** Interactive workers keep no copy of the messages they take
  (no ack emulation, core/queue.py), and even with one, `BRPOP` removes a
  message from the list before kombu records it. Every queued job is noted in
  its queue's `keys.queued` set, scored by when it was queued, until a worker
  takes it. A queue is a FIFO list, so the job whose message is next to be
  taken (the list's tail) marks how far workers have taken: every job queued
  before it had its message taken already (an empty queue marks the
  present). A worker takes a message only when a thread is free to claim it
  (prefetch 1, late acks), so a job taken and not claimed soon after lost its
  message. The reaper notes the mark each pass; a job queued before a mark
  noted `queued_lost_after_s` ago, still not claimed and with no copy among
  kombu's unacknowledged messages, is sent again, even while newer jobs keep
  the queue busy. A message next in line that gives no mark (a delayed retry,
  scored by its due time; a copy of a job already started) leaves the earlier
  marks in force. Marks are taken `_MARK_MARGIN_S` early, for the moment
  between an API stamping a job and pushing its message, and for API hosts
  whose clocks differ. A message sent twice is harmless: the second finds the
  job leased or finished and is dropped.
- **Listing indexes** (core/lua/indexes.lua) lose the entries of records
  past their TTL, once a minute.
- **A job not started by its deadline** (`keys.DEADLINES`) while nobody holds
  it (still in its queue, or behind a delayed retry's message) ends
  `expired`; one a worker holds expires there (worker/job_runner.py). A
  batch past its deadline (`keys.BATCH_DEADLINES`) has its items that no
  worker picked end `expired` at once.

Only one reaper wins each repair: the scripts check and change in one step.
"""

import asyncio
import logging
import time
from collections import deque
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core import keys, kombu_wire, scripts
from core.jobs import JobStatus
from core.queue import RUN_JOB_TASK
from core.settings import Settings
from worker.job_store import JobStore
from worker.runs import Send

log = logging.getLogger(__name__)

# How much earlier than it appears a mark of how far workers have taken a queue is taken.
_MARK_MARGIN_S = 1.0
# How often the listing indexes are trimmed of expired records' entries.
_TRIM_EVERY_S = 60.0
_LOST = {"status": "retrying", "reason": "the worker running this job was lost", "delay_s": 0}
# What `requeue_lost` returns for a job it ended instead.
_DEAD_LETTERED = 3


class TakenMarks:
    """How far workers have taken a queue, from the marks the reaper notes each pass (module docstring).

    Pure, with the time passed in: `note(now, mark)` returns a time such that every job queued before it
    had its message taken at least `lost_after_s` ago, or None while no mark is that old."""

    def __init__(self, lost_after_s: float) -> None:
        self._lost_after_s = lost_after_s
        self._pending: deque[tuple[float, float]] = deque()  # (noted at, mark), not yet old enough
        self._taken: float | None = None

    def note(self, now: float, mark: float | None) -> float | None:
        if mark is not None:
            self._pending.append((now, mark))
        while self._pending and self._pending[0][0] <= now - self._lost_after_s:
            _, old_mark = self._pending.popleft()
            # A mark, once true, stays true (its jobs' messages stay taken): the highest one holds.
            self._taken = old_mark if self._taken is None else max(self._taken, old_mark)
        return self._taken


def marking_job(message: str) -> str | None:
    """The job whose message `message` (next in a queue) is, if it marks how far workers have taken the
    queue: not a delayed retry (scored by its due time), not another task, not unreadable."""
    headers = kombu_wire.task_headers(message)
    if headers is None or headers.get("eta") is not None or headers.get("task") != RUN_JOB_TASK:
        return None
    return str(headers["id"])


class Reaper:
    def __init__(
        self, client: aioredis.Redis, settings: Settings, store: JobStore, send: Send, batch: int = 200
    ) -> None:
        self._redis = client
        self._settings = settings
        self._store = store
        self._send = send
        self._batch = batch
        self._marks = TakenMarks(settings.queued_lost_after_s)
        self._next_trim = 0.0

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reaper_interval_s)
            try:
                await self.requeue_lost_workers()
                await self.resend_lost_messages()
                await self.expire_overdue()
                await self.expire_overdue_batches()
                await self.trim_indexes()
            except RedisError as e:
                log.warning("reaper could not reach Redis: %s", e)
            except Exception:
                log.exception("reaper failed; it will try again")

    async def requeue_lost_workers(self) -> int:
        now = time.time()
        expired = await self._redis.zrangebyscore(keys.LEASES, "-inf", now, start=0, num=self._batch)
        requeued = 0
        for job_id in map(str, expired):
            try:
                code = await self._store.requeue_lost(job_id, now, _LOST)
            except RedisError:
                raise
            except Exception:
                # A record the failure cannot be written from: logged each pass, never the others' end.
                log.exception("job %s lost its worker and could not be put back; trying again", job_id)
                continue
            if code == _DEAD_LETTERED:
                log.error(
                    "job %s lost its worker on %d deliveries (JOB_MAX_DELIVERIES); it failed, DeadLettered, and is "
                    "not delivered again",
                    job_id,
                    self._settings.job_max_deliveries,
                )
            elif code:
                log.warning("job %s lost its worker; it runs again", job_id)
                requeued += 1
            if code == 1:
                await self._send(job_id, await self._model(job_id), 0.0)
        return requeued

    async def resend_lost_messages(self) -> int:
        """Send again the interactive jobs whose message was lost (module docstring)."""
        queue = self._settings.interactive_queue
        now = time.time()
        taken_before = await self._taken_before(queue, now)
        if taken_before is None:
            return 0
        waiting = cast(
            list[tuple[str, float]],
            await self._redis.zrangebyscore(
                keys.queued(queue), "-inf", f"({taken_before!r}", start=0, num=self._batch, withscores=True
            ),
        )
        if not waiting:
            return 0
        # Taken by a worker with ack emulation and not acknowledged: kombu returns these itself if it died.
        held = kombu_wire.unacked_task_ids(map(str, await self._redis.hvals(kombu_wire.UNACKED)))
        resent = 0
        for job_id, score in waiting:
            if job_id in held:
                continue
            claim = [job_id, repr(score), repr(now)]
            if await scripts.acall(self._redis, "job_resend_lost", [keys.queued(queue), keys.job(job_id)], claim):
                log.warning("job %s: queued %.0f s and its message is gone; sending it again", job_id, now - score)
                await self._send(job_id, await self._model(job_id), 0.0)
                resent += 1
        return resent

    async def expire_overdue(self) -> int:
        now = time.time()
        due = await self._redis.zrangebyscore(keys.DEADLINES, "-inf", now, start=0, num=self._batch)
        expired = 0
        for job_id in map(str, due):
            fields = cast(dict[str, str], await self._redis.hgetall(keys.job(job_id)))
            if not fields or fields.get("status") != JobStatus.queued.value or not fields.get("expires_at"):
                await self._redis.zrem(keys.DEADLINES, job_id)
                continue
            if await self._store.expire(job_id, "", fields) > 0:
                log.info("job %s expired in its queue before any worker started it", job_id)
                expired += 1
        return expired

    async def expire_overdue_batches(self) -> int:
        now = time.time()
        due = await self._redis.zrangebyscore(keys.BATCH_DEADLINES, "-inf", now, start=0, num=self._batch)
        expired = 0
        for batch_id in map(str, due):
            if await scripts.acall(self._redis, "batch_expire", [keys.batch(batch_id)], [repr(now)]):
                log.info("batch %s: items not started by its deadline expired", batch_id)
                expired += 1
            await self._redis.zrem(keys.BATCH_DEADLINES, batch_id)
        return expired

    async def trim_indexes(self) -> int:
        """Drop the listing indexes' entries of records past their TTL (core/lua/indexes.lua), once a minute."""
        now = time.time()
        if now < self._next_trim:
            return 0
        self._next_trim = now + _TRIM_EVERY_S
        trimmed = 0
        async for key in self._redis.scan_iter(match=f"{keys.INDEX_PREFIX}*", count=500):
            trimmed += int(await self._redis.zremrangebyscore(key, "-inf", now - self._settings.job_ttl_s))
        return trimmed

    async def _model(self, job_id: str) -> str | None:
        model: Any = await self._redis.hget(keys.job(job_id), "model")
        return str(model) if model else None

    async def _taken_before(self, queue: str, now: float) -> float | None:
        return self._marks.note(now, await self._mark(queue, now))

    async def _mark(self, queue: str, now: float) -> float | None:
        """How far workers have taken `queue` now: jobs queued before this time no longer have a message in it."""
        next_message = await self._redis.lindex(queue, -1)
        if next_message is None:
            return now - _MARK_MARGIN_S
        job_id = marking_job(str(next_message))
        if job_id is None:
            return None
        queued_at: float | None = await self._redis.zscore(keys.queued(queue), job_id)
        # Never past the present: a job retried while an older copy of its message still waits is
        # scored from its retry's due time.
        return None if queued_at is None else min(queued_at, now) - _MARK_MARGIN_S
