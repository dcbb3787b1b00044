"""Wake-ups from Redis pub/sub for a worker process's waiting callers: one subscription for all of them.

A caller that waits for something another process will announce (a slot
released, a batch with items again) waits on a channel here, with a timeout:
pub/sub is at most once, so every waiter also looks again on its own once the
timeout passes, and a lost subscription costs latency, never progress.
"""

import asyncio
import contextlib
import logging
from collections.abc import Iterable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class Wakeups:
    def __init__(self, client: aioredis.Redis, channels: Iterable[str]) -> None:
        self._redis = client
        self._channels = sorted(set(channels))
        self._events: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="wakeups")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait(self, channel: str, timeout_s: float) -> bool:
        """Until something is published on `channel` or `timeout_s` passed; True if woken."""
        event = self._events.setdefault(channel, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), max(timeout_s, 0.0))
        except TimeoutError:
            return False
        return True

    def wake(self, channel: str) -> None:
        event = self._events.pop(channel, None)
        if event is not None:
            event.set()

    async def _listen(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self._channels)
                async for message in pubsub.listen():
                    channel = message["channel"]
                    self.wake(channel.decode() if isinstance(channel, bytes) else str(channel))
            except RedisError as e:
                log.warning("wake-ups from Redis lost (%s); waiters look on their own until they are back", e)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(RedisError):
                    await pubsub.aclose()
