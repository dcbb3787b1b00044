"""Per-key limits, kept in Redis so they hold across every API process.

- **Submissions**: a token bucket per key (`KEY_SUBMIT_RATE_PER_S`, at most
  `KEY_SUBMIT_BURST` at once). A batch counts as one submission; its size
  has its own limit (`KEY_BATCH_MAX_ITEMS`). Over the limit: 429 with
  `Retry-After`, nothing stored.
- **Open event streams**: each stream holds a slot in the key's sorted set
  (`KEY_MAX_SSE_STREAMS`), scored by when its lease runs out. The API
  process renews the leases of the streams it serves and frees a slot when
  its stream ends; a process that dies without freeing its slots loses them
  once the lease runs out (`SSE_SLOT_LEASE_S`), so a crash never locks a
  key out for good.

Both scripts read Redis' clock, not the API's, so processes on machines
with different clocks agree.
"""

import asyncio
import contextlib
import logging
import math
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis
from fastapi import HTTPException
from redis.exceptions import RedisError

from api.auth import Caller
from api.metrics import REQUESTS_REFUSED, SSE_STREAMS_OPEN
from core import keys
from core.settings import Settings

log = logging.getLogger(__name__)

# KEYS: bucket hash. ARGV: refill rate per second, capacity, cost.
# Returns "0" when admitted, else the seconds until `cost` tokens are there.
TOKEN_BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.6f', now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return string.format('%.6f', wait)
"""

# KEYS: the key's stream set. ARGV: limit, lease_s, slot token. 1: taken; 0: full.
TAKE_SLOT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return 1
"""


class TooManyRequests(HTTPException):
    def __init__(self, detail: str, retry_after_s: float) -> None:
        super().__init__(429, detail, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


async def check_submission(redis: aioredis.Redis, settings: Settings, caller: Caller) -> None:
    """Take one submission from the caller's bucket, or raise 429 saying when to retry."""
    rate = settings.key_submit_rate_per_s
    if rate <= 0:
        return
    burst = max(1, settings.key_submit_burst)
    wait_s = float(await redis.eval(TOKEN_BUCKET_LUA, 1, keys.rate_submit(caller.bucket), str(rate), str(burst), "1"))
    if wait_s > 0:
        REQUESTS_REFUSED.labels("submission_rate").inc()
        raise TooManyRequests(
            f"too many submissions for this key: at most {rate:g} per second (bursts of {burst}); "
            f"retry in {wait_s:.1f} s",
            wait_s,
        )


@dataclass
class Stream:
    kind: str  # "job" or "batch"
    token: str | None  # its slot; None when streams are not limited
    open: bool = True


class StreamSlots:
    """Counts the event streams each key has open, across API processes."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._limit = settings.key_max_sse_streams
        self._lease_s = settings.sse_slot_lease_s
        self._held: dict[str, str] = {}  # slot token -> its Redis key
        self._renewer: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self._limit > 0

    async def start(self) -> None:
        if self.enabled:
            self._renewer = asyncio.create_task(self._renew_forever())

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer

    async def open(self, caller: Caller, kind: str) -> Stream:
        """Count a stream the caller opens, or 429 when the key has all of its streams open already."""
        token = None
        if self.enabled:
            token = uuid.uuid4().hex
            key = keys.sse_streams(caller.bucket)
            if not await self._redis.eval(TAKE_SLOT_LUA, 1, key, str(self._limit), str(self._lease_s), token):
                REQUESTS_REFUSED.labels("sse_streams").inc()
                raise TooManyRequests(
                    f"this key already has {self._limit} event streams open (its limit); close one first",
                    self._lease_s / 6,
                )
            self._held[token] = key
        SSE_STREAMS_OPEN.labels(kind).inc()
        return Stream(kind, token)

    async def close(self, stream: Stream) -> None:
        """Once per stream, when its response has ended (however it ended)."""
        if not stream.open:
            return
        stream.open = False
        SSE_STREAMS_OPEN.labels(stream.kind).dec()
        if stream.token is None or (key := self._held.pop(stream.token, None)) is None:
            return
        try:
            await self._redis.zrem(key, stream.token)
        except RedisError as e:
            log.warning("could not free an event-stream slot (its lease will): %s", e)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lease_s / 3)
            held = dict(self._held)
            if not held:
                continue
            try:
                # Redis' clock, like the script that took the slots.
                seconds, micros = await self._redis.time()
                expires = seconds + micros / 1e6 + self._lease_s
                async with self._redis.pipeline(transaction=False) as pipe:
                    for token, key in held.items():
                        pipe.zadd(key, {token: expires}, xx=True)
                        pipe.expire(key, math.ceil(self._lease_s) + 1)
                    await pipe.execute()
            except RedisError as e:
                log.warning("could not renew event-stream slots: %s", e)
