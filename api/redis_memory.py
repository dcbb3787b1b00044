"""Redis never fills: above a high-water mark the API refuses new submissions, and running work finishes.

Redis runs with `noeviction`: at its `maxmemory` every write fails, the
workers' results included. So each API process reads Redis' memory use
every `_REFRESH_S` (`INFO memory`), and while it is above
`REDIS_HIGH_WATER` of the limit (Redis' `maxmemory`, or
`REDIS_MEMORY_LIMIT_BYTES` for a Redis without one) every submission is
answered `503` with `Retry-After`. Reads, cancels and the workers go on, so
jobs already accepted still finish and write their results in the room
left above the mark; submissions are taken again as soon as memory falls
back (records expire, results are read and batches end).
"""

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import send_error
from api.metrics import REQUESTS_REFUSED
from api.paths import SUBMISSIONS
from core.settings import Settings

log = logging.getLogger(__name__)

_REFRESH_S = 1.0
RETRY_AFTER_S = 10


@dataclass(frozen=True)
class Memory:
    used_bytes: int
    limit_bytes: int | None  # None: no limit known, so no mark

    @property
    def share(self) -> float | None:
        return self.used_bytes / self.limit_bytes if self.limit_bytes else None


class MemoryGuard:
    """Reads Redis' memory use in the background; `SubmissionGuard` refuses submissions by it."""

    def __init__(self, settings: Settings) -> None:
        self._redis: aioredis.Redis | None = None
        self._high_water = settings.redis_high_water
        self._configured_limit = settings.redis_memory_limit_bytes
        self.memory: Memory | None = None  # None until read once
        self._task: asyncio.Task[None] | None = None

    async def start(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._task = asyncio.create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def above_high_water(self) -> bool:
        share = self.memory.share if self.memory is not None else None
        return share is not None and share >= self._high_water

    def refusal(self) -> str | None:
        """Why a submission is refused now (above the high-water mark), or None while there is room."""
        if not self.above_high_water:
            return None
        assert self.memory is not None and self.memory.share is not None
        return (
            f"Redis is {self.memory.share:.0%} full, above its high-water mark of {self._high_water:.0%} "
            "(REDIS_HIGH_WATER): new submissions are refused until work in progress finishes and frees memory; "
            "retry later"
        )

    async def refresh(self) -> Memory:
        assert self._redis is not None
        info = await self._redis.info("memory")
        limit = int(info.get("maxmemory") or 0) or self._configured_limit
        was_above = self.above_high_water
        self.memory = Memory(int(info["used_memory"]), limit)
        if self.above_high_water and not was_above:
            log.warning(
                "Redis holds %d of %d bytes, above REDIS_HIGH_WATER (%.0f%%): refusing new submissions",
                self.memory.used_bytes,
                limit,
                self._high_water * 100,
            )
        elif was_above and not self.above_high_water:
            log.warning("Redis is below REDIS_HIGH_WATER again: taking submissions")
        return self.memory

    async def _refresh_forever(self) -> None:
        warned = False
        while True:
            try:
                memory = await self.refresh()
                if memory.limit_bytes is None and not warned:
                    warned = True
                    log.warning(
                        "Redis has no maxmemory and REDIS_MEMORY_LIMIT_BYTES is unset: nothing stops it from "
                        "filling up (docs/operations.md, 'Quotas and Redis memory')"
                    )
            except (RedisError, OSError, KeyError, ValueError) as e:
                log.debug("could not read Redis' memory use: %s", e)
            await asyncio.sleep(_REFRESH_S)


class SubmissionGuard:
    """Pure ASGI: a submission (api/paths.py) while Redis is above its high-water mark is a 503 before its
    body is read; everything else passes."""

    def __init__(self, app: ASGIApp, guard: MemoryGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and SUBMISSIONS.match(scope["path"]):
            reason = self.guard.refusal()
            if reason is not None:
                REQUESTS_REFUSED.labels("redis_high_water").inc()
                await send_error(send, scope["path"], 503, reason, {"retry-after": str(RETRY_AFTER_S)})
                return
        await self.app(scope, receive, send)
