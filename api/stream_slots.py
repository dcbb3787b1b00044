"""Open event streams per key, counted in Redis across every API process.

Each stream holds a slot in the key's sorted set (`KEY_MAX_SSE_STREAMS`),
scored by when its lease runs out (`stream_slot_take` in
core/lua/limits.lua). The API process renews the leases of the streams it
serves and frees a slot when its stream ends; a process that dies without
freeing its slots loses them once the lease runs out (`SSE_SLOT_LEASE_S`),
so a crash never locks a key out for good.
"""

import asyncio
import contextlib
import logging
import math
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from api.auth import Caller
from api.metrics import REQUESTS_REFUSED, SSE_STREAMS_OPEN
from api.submission_rate import TooManyRequests
from core import keys, scripts
from core.settings import Settings

log = logging.getLogger(__name__)


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
            if not await scripts.acall(
                self._redis, "stream_slot_take", [key], [str(self._limit), str(self._lease_s), token]
            ):
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
