"""Job leases: a redelivered job never runs twice at once, a lost one is requeued.

Two ways a job can be lost, both repaired by the reaper every worker runs:

- its worker died while running it: its lease runs out (below);
- its worker died after taking its message from the queue and before
  starting the job: an interactive worker keeps no copy of the messages it
  takes (no ack emulation, core/queue.py), and even with one, `BRPOP`
  removes a message from the list before the next command writes it to
  kombu's `unacked` hash. Nothing would ever run the job. Every queued job
  is noted in its queue's `keys.queued` set until a worker starts it. A job
  noted there for `queued_lost_after_s`, while its queue is empty and its
  message is not among kombu's unacknowledged ones, lost its message: the
  reaper sends it again. A queue with messages waiting is left alone (the
  job's message may be among them); the check runs again once it has
  drained. A message sent twice is harmless: the second finds the job
  leased or finished and is dropped.

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

import logging
import threading
import time
from collections.abc import Callable

import redis

from core import keys
from core.settings import Settings

log = logging.getLogger(__name__)

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
        for queue in (self._settings.interactive_queue, self._settings.bulk_queue):
            if self._redis.llen(queue):
                continue
            waiting: list[tuple[str, float]] = self._redis.zrangebyscore(  # type: ignore[assignment]
                keys.queued(queue),
                "-inf",
                now - self._settings.queued_lost_after_s,
                start=0,
                num=self._batch,
                withscores=True,
            )
            if not waiting:
                continue
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
