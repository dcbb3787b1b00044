"""Per-key slots counted in Redis across every API process: open event streams, and long polls.

Each open event stream (`KEY_MAX_SSE_STREAMS`) and each request waiting for
a job to end (`?wait`, `KEY_MAX_LONG_POLLS`) holds a slot in its key's
sorted set, scored by when its lease runs out (`stream_slot_take` in
core/lua/limits.lua). The API process renews the leases of the slots it
holds and frees a slot when its request ends; a process that dies without
freeing its slots loses them once the lease runs out (`SSE_SLOT_LEASE_S`),
so a crash never locks a key out for good.
"""

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from prometheus_client import Gauge
from redis.exceptions import RedisError

from api.auth import Caller
from api.metrics import LONG_POLLS_OPEN, REQUESTS_REFUSED, SSE_STREAMS_OPEN
from api.submission_rate import TooManyRequests
from core import keys, scripts
from core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Slot:
    kind: str  # what holds it: "job" or "batch" (event streams), "wait" (long polls)
    token: str | None  # its place in Redis; None when these slots are not limited
    open: bool = True


class KeySlots:
    """Counts what each key holds open of one kind of slot, across API processes."""

    def __init__(
        self,
        redis: aioredis.Redis,
        limit: int,
        lease_s: float,
        key_of: Callable[[str], str],
        what: str,
        reason: str,
        gauge: Gauge,
    ) -> None:
        self._redis = redis
        self._limit = limit
        self._lease_s = lease_s
        self._key_of = key_of
        self._what = what  # for messages: "event streams"
        self._reason = reason  # for the refusals' metric: "sse_streams"
        self._gauge = gauge
        self._held: dict[str, str] = {}  # slot token -> its Redis key
        self._renewer: asyncio.Task[None] | None = None

    @classmethod
    def event_streams(cls, redis: aioredis.Redis, settings: Settings) -> "KeySlots":
        return cls(
            redis, settings.key_max_sse_streams, settings.sse_slot_lease_s, keys.sse_streams, "event streams",
            "sse_streams", SSE_STREAMS_OPEN,
        )  # fmt: skip

    @classmethod
    def long_polls(cls, redis: aioredis.Redis, settings: Settings) -> "KeySlots":
        return cls(
            redis, settings.key_max_long_polls, settings.sse_slot_lease_s, keys.long_polls,
            "requests waiting for a job to end", "long_polls", LONG_POLLS_OPEN,
        )  # fmt: skip

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

    async def open(self, caller: Caller, kind: str) -> Slot:
        """Take a slot for the caller, or 429 when the key holds all of its slots already."""
        token = None
        if self.enabled:
            token = uuid.uuid4().hex
            key = self._key_of(caller.bucket)
            if not await scripts.acall(
                self._redis, "stream_slot_take", [key], [str(self._limit), str(self._lease_s), token]
            ):
                REQUESTS_REFUSED.labels(self._reason).inc()
                raise TooManyRequests(
                    f"this key already has {self._limit} {self._what} open (its limit); close one first",
                    self._lease_s / 6,
                )
            self._held[token] = key
        self._gauge.labels(kind).inc()
        return Slot(kind, token)

    @contextlib.asynccontextmanager
    async def hold(self, caller: Caller, kind: str) -> AsyncIterator[None]:
        """A slot for the length of the block."""
        slot = await self.open(caller, kind)
        try:
            yield
        finally:
            await self.close(slot)

    async def close(self, slot: Slot) -> None:
        """Once per slot, when its request has ended (however it ended)."""
        if not slot.open:
            return
        slot.open = False
        self._gauge.labels(slot.kind).dec()
        if slot.token is None or (key := self._held.pop(slot.token, None)) is None:
            return
        try:
            await self._redis.zrem(key, slot.token)
        except RedisError as e:
            log.warning("could not free a slot of %s (its lease will): %s", self._what, e)

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
                log.warning("could not renew the slots of %s: %s", self._what, e)
