"""Worker heartbeats in Redis, so `/ready` knows who is online without a broadcast.

Celery's own `ping` is a broadcast that waits out its whole timeout; a sorted
set of last-seen times answers in one round trip. A worker that stops
cleanly removes itself; one that dies ages out after
`worker_offline_after_s`.
"""

import logging
import os
import threading
import time
from collections.abc import Callable

import redis

from core import keys
from core.settings import Settings

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        redis_client: redis.Redis,
        settings: Settings,
        name: str,
        info: dict[str, str],
        live_info: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self._redis = redis_client
        self._settings = settings
        self._name = name
        self._info = {**info, "pid": str(os.getpid())}
        # Asked at every beat: what may change while the worker runs (the program versions it serves).
        self._live_info = live_info
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            with self._redis.pipeline() as pipe:
                pipe.zrem(keys.WORKERS, self._name)
                pipe.delete(keys.worker(self._name))
                pipe.execute()
        except redis.RedisError as e:
            log.warning("could not remove heartbeat of %s: %s", self._name, e)

    def _run(self) -> None:
        while not self._stop.wait(self._settings.worker_heartbeat_s):
            try:
                self._beat()
            except redis.RedisError as e:
                log.warning("heartbeat failed: %s", e)

    def _beat(self) -> None:
        now = time.time()
        ttl_s = int(self._settings.worker_offline_after_s) + 1
        with self._redis.pipeline() as pipe:
            pipe.zadd(keys.WORKERS, {self._name: now})
            # Forget workers that have been gone for a day.
            pipe.zremrangebyscore(keys.WORKERS, "-inf", now - 86400)
            info = {**self._info, **(self._live_info() if self._live_info else {})}
            pipe.hset(keys.worker(self._name), mapping=info)  # type: ignore[arg-type]  # redis-py: invariant keys
            pipe.expire(keys.worker(self._name), ttl_s)
            pipe.execute()
