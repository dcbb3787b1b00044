"""Job leases: a redelivered job never runs twice at once, a lost one is requeued.

Two ways a job can be lost, both repaired by the reaper every worker runs:

- its worker died while running it: its lease runs out (below);
- its worker died after taking its message from the queue and before
  starting the job: an interactive worker keeps no copy of the messages it
  takes (no ack emulation, core/queue.py), and even with one, `BRPOP`
  removes a message from the list before the next command writes it to
  kombu's `unacked` hash. Nothing would ever run the job. Every queued job
  is noted in its queue's `keys.queued` set, scored by when it was queued,
  until a worker starts it. A queue is a FIFO list, so the job whose message
  is next to be taken (the list's tail) marks how far workers have taken:
  every job queued before it had its message taken already (an empty queue
  marks the present). A worker takes a message only when a thread is free
  for it (prefetch 1, late acks, core/queue.py), so a job taken and not
  started soon after lost its message. The reaper notes the mark each
  pass; a job queued before a mark noted `queued_lost_after_s` ago, still
  not started and with no copy among kombu's unacknowledged messages, is
  sent again, even while newer jobs keep the queue busy: a queue that never
  drains must not keep it waiting. A message next in line that gives no
  mark (a delayed retry, scored by its due time; a batch's expansion; a
  copy of a job already started) leaves the earlier marks in force. Marks
  are taken `_MARK_MARGIN_S` early, for the moment between an API stamping
  a job and pushing its message, and for API hosts whose clocks differ.
  A message sent twice is harmless: the second finds the job leased or
  finished and is dropped.

Celery on Redis only redelivers a dead worker's message with ack emulation
on (the bulk queue's workers) and after the broker's visibility timeout. We
do not wait for it. A worker that starts a job takes a lease on it (its id in
`keys.RUNNING`, scored by the lease's expiry; taken by the start script in
worker/job_updates.py, released by its finish script) and renews the leases
of all its jobs every `job_lease_s / 3`. Any worker's reaper requeues a job
whose lease ran out, because its worker is gone. When the broker later
redelivers the original message too, the lease or the job's finished status
turns it away.

A job whose worker lost Redis halfway (its final write may or may not have
happened) is `forget`-ten, not released: its lease then runs out and the
reaper requeues it if it is still `running`, instead of it staying
`running` forever.

Scripts here touch the job hash and the global `RUNNING` set, so unlike the
event script they assume a single Redis, not a cluster.
"""

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import redis

from core import keys
from core.queue import RUN_JOB_TASK
from core.settings import Settings

log = logging.getLogger(__name__)

# How much earlier than it appears a mark of how far workers have taken a
# queue is taken (module docstring).
_MARK_MARGIN_S = 1.0

# KEYS: job hash, running set. ARGV: job id, now.
# Returns 1 when this caller took the expired lease away and the job still
# needs running (only one reaper can win); 0 otherwise.
CLAIM_EXPIRED_LUA = """
local expiry = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not expiry or tonumber(expiry) > tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
return 1
"""


class Leases:
    """This process's leases, renewed by one background thread."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._redis = client
        self._settings = settings
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._renew_forever, name="lease-renewal", daemon=True)
        self._thread.start()

    def track(self, job_id: str) -> None:
        """Renew the lease the start script took, until the job is released or forgotten."""
        with self._lock:
            self._held.add(job_id)

    def forget(self, job_id: str) -> None:
        """Stop renewing (the finish script released the lease, or it is left to run out)."""
        with self._lock:
            self._held.discard(job_id)

    def release(self, job_id: str) -> None:
        self.forget(job_id)
        self._redis.zrem(keys.RUNNING, job_id)

    def _renew_forever(self) -> None:
        interval_s = self._settings.job_lease_s / 3
        while True:
            time.sleep(interval_s)
            with self._lock:
                held = list(self._held)
            if not held:
                continue
            expiry = time.time() + self._settings.job_lease_s
            try:
                # XX: never resurrect a lease that was released meanwhile.
                self._redis.zadd(keys.RUNNING, dict.fromkeys(held, expiry), xx=True)
            except redis.RedisError as e:
                log.warning("could not renew %d job leases: %s", len(held), e)


# KEYS: a queue's queued set, job hash. ARGV: job id, its score as seen, now.
# Returns 1 when this caller is to send the job again (only one reaper can:
# the score moves to now); 0 when another did, or the job no longer waits.
CLAIM_LOST_LUA = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if redis.call('HGET', KEYS[2], 'status') ~= 'queued' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""


class Reaper:
    """Requeues jobs whose worker died (their lease ran out) and sends again those whose message was lost."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        requeue: Callable[[str], None],
        resend: Callable[[str, str], None],
        batch: int = 200,
    ) -> None:
        self._redis = client
        self._settings = settings
        self._claim = client.register_script(CLAIM_EXPIRED_LUA)
        self._claim_lost = client.register_script(CLAIM_LOST_LUA)
        self._requeue = requeue
        self._resend = resend
        self._batch = batch
        # Per queue: marks not yet `queued_lost_after_s` old (noted at, mark), and the latest that is.
        self._pending_marks: dict[str, deque[tuple[float, float]]] = {}
        self._taken_marks: dict[str, float] = {}
        self._thread = threading.Thread(target=self._reap_forever, name="reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def reap_once(self) -> int:
        now = time.time()
        expired = self._redis.zrangebyscore(keys.RUNNING, "-inf", now, start=0, num=self._batch)
        requeued = 0
        for raw in expired:
            job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            if self._claim(keys=[keys.job(job_id), keys.RUNNING], args=[job_id, repr(now)]):
                log.warning("job %s lost its worker; requeueing it", job_id)
                self._requeue(job_id)
                requeued += 1
        return requeued

    def resend_lost(self) -> int:
        """Send again the jobs whose message was lost (see the module docstring)."""
        now = time.time()
        resent = 0
        held: str | None = None
        for queue in (self._settings.interactive_queue, self._settings.bulk_queue):
            taken_before = self._taken_before(queue, now)
            if taken_before is None:
                continue
            waiting: list[tuple[str, float]] = self._redis.zrangebyscore(  # type: ignore[assignment]
                keys.queued(queue), "-inf", f"({taken_before!r}", start=0, num=self._batch, withscores=True
            )
            if not waiting:
                continue
            if held is None:
                # Taken by a worker and not acknowledged: kombu returns these itself if their worker died.
                held = "\n".join(str(m) for m in self._redis.hvals(keys.KOMBU_UNACKED))
            for job_id, score in waiting:
                if job_id in held:
                    continue
                if self._claim_lost(keys=[keys.queued(queue), keys.job(job_id)], args=[job_id, repr(score), repr(now)]):
                    log.warning("job %s: queued %.0f s and its message is gone; sending it again", job_id, now - score)
                    self._resend(job_id, queue)
                    resent += 1
        return resent

    def _taken_before(self, queue: str, now: float) -> float | None:
        """A time such that every job queued on `queue` before it had its message taken at least
        `queued_lost_after_s` ago; None while no mark is that old."""
        mark = self._mark(queue, now)
        pending = self._pending_marks.setdefault(queue, deque())
        if mark is not None:
            pending.append((now, mark))
        while pending and pending[0][0] <= now - self._settings.queued_lost_after_s:
            _, old_mark = pending.popleft()
            # A mark, once true, stays true (its jobs' messages stay taken): the highest one holds.
            self._taken_marks[queue] = max(self._taken_marks.get(queue, old_mark), old_mark)
        return self._taken_marks.get(queue)

    def _mark(self, queue: str, now: float) -> float | None:
        """How far workers have taken `queue` now: jobs queued before this time no longer have a message in it."""
        next_message = self._redis.lindex(queue, -1)
        if next_message is None:
            return now - _MARK_MARGIN_S
        try:
            headers = json.loads(next_message)["headers"]
            job_id = str(headers["id"])
            marks_nothing = headers.get("eta") is not None or headers.get("task") != RUN_JOB_TASK
        except (ValueError, KeyError, TypeError):
            return None
        if marks_nothing:
            return None
        queued_at: float | None = self._redis.zscore(keys.queued(queue), job_id)
        # Never past the present: a job retried while an older copy of its message still waits is
        # scored from its retry's due time.
        return None if queued_at is None else min(queued_at, now) - _MARK_MARGIN_S

    def _reap_forever(self) -> None:
        while True:
            time.sleep(self._settings.reaper_interval_s)
            try:
                self.reap_once()
                self.resend_lost()
            except redis.RedisError as e:
                log.warning("reaper could not reach Redis: %s", e)
            except Exception:
                log.exception("reaper failed; it will try again")
