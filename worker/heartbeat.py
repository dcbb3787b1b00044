"""Worker heartbeats in Redis, so `/ready` knows who is online without a broadcast.

Celery's own `ping` is a broadcast that waits out its whole timeout; a sorted
set of last-seen times answers in one round trip. A worker that stops
cleanly removes itself; one that dies ages out after
`worker_offline_after_s`.
"""

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core import keys
from core.settings import Settings

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        name: str,
        info: dict[str, str],
        live_info: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self._redis = client
        self._settings = settings
        self._name = name
        self._info = {**info, "pid": str(os.getpid())}
        # Asked at every beat: what may change while the worker runs (the program versions it serves).
        self._live_info = live_info

    async def run_forever(self) -> None:
        while True:
            try:
                await self.beat()
            except RedisError as e:
                log.warning("heartbeat failed: %s", e)
            await asyncio.sleep(self._settings.worker_heartbeat_s)

    async def remove(self) -> None:
        try:
            async with self._redis.pipeline() as pipe:
                pipe.zrem(keys.WORKERS, self._name)
                pipe.delete(keys.worker(self._name))
                await pipe.execute()
        except RedisError as e:
            log.warning("could not remove heartbeat of %s: %s", self._name, e)

    async def beat(self) -> None:
        now = time.time()
        ttl_s = int(self._settings.worker_offline_after_s) + 1
        live = await asyncio.to_thread(self._live_info) if self._live_info else {}
        async with self._redis.pipeline() as pipe:
            pipe.zadd(keys.WORKERS, {self._name: now})
            # Forget workers that have been gone for a day.
            pipe.zremrangebyscore(keys.WORKERS, "-inf", now - 86400)
            info: Any = {**self._info, **live}  # redis-py's mapping type is invariant in its keys
            pipe.hset(keys.worker(self._name), mapping=info)
            pipe.expire(keys.worker(self._name), ttl_s)
            await pipe.execute()
