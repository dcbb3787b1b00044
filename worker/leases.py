"""Job leases: a redelivered job never runs twice at once, a lost one is requeued.

Celery on Redis only redelivers a dead worker's message after the broker's
visibility timeout (longer than the longest job, so tens of minutes). We do
not wait for it. A worker that starts a job takes a lease on it (its id in
`keys.RUNNING`, scored by the lease's expiry) and renews the leases of all its
jobs every `job_lease_s / 3`. Any worker's reaper requeues a job whose lease
ran out, because its worker is gone. When the broker later redelivers the
original message too, the lease or the job's finished status turns it away.

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

# KEYS: job hash, running set. ARGV: job id, now, lease expiry, worker name.
# Returns {attempts, status}: attempts is -1 (no such job), -2 (finished;
# status says how) or -3 (another worker holds a live lease).
START_LUA = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {-1, ''} end
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then return {-2, status} end
local held = redis.call('ZSCORE', KEYS[2], ARGV[1])
if held and tonumber(held) > tonumber(ARGV[2]) then return {-3, status} end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[1], 'worker', ARGV[4], 'started_at', ARGV[2])
return {attempts, status}
"""

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

NO_JOB, FINISHED, LEASED = -1, -2, -3


class Leases:
    """This process's leases, renewed by one background thread."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._redis = client
        self._settings = settings
        self._start = client.register_script(START_LUA)
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._renew_forever, name="lease-renewal", daemon=True)
        self._thread.start()

    def acquire(self, job_id: str, worker_name: str) -> tuple[int, str]:
        """Take the job's lease: (attempts, previous status), or (NO_JOB | FINISHED | LEASED, status)."""
        now = time.time()
        attempts, status = self._start(
            keys=[keys.job(job_id), keys.RUNNING],
            args=[job_id, repr(now), repr(now + self._settings.job_lease_s), worker_name],
        )
        if int(attempts) > 0:
            with self._lock:
                self._held.add(job_id)
        return int(attempts), str(status)

    def release(self, job_id: str) -> None:
        with self._lock:
            self._held.discard(job_id)
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


class Reaper:
    """Requeues jobs whose worker died (their lease ran out)."""

    def __init__(
        self, client: redis.Redis, settings: Settings, requeue: Callable[[str], None], batch: int = 200
    ) -> None:
        self._redis = client
        self._settings = settings
        self._claim = client.register_script(CLAIM_EXPIRED_LUA)
        self._requeue = requeue
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

    def _reap_forever(self) -> None:
        while True:
            time.sleep(self._settings.reaper_interval_s)
            try:
                self.reap_once()
            except redis.RedisError as e:
                log.warning("reaper could not reach Redis: %s", e)
            except Exception:
                log.exception("reaper failed; it will try again")
