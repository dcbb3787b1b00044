"""One Redis pub/sub connection per API process, fanned out to every waiter.

SSE streams call `subscribe(job_id)` and get an asyncio queue of that job's
live events. The hub subscribes to a job's channel when its first waiter
arrives and unsubscribes when its last one leaves, so Redis sees one
connection per process however many clients are watching.

`?wait` needs only a job's terminal event, so it calls `until_done(job_id)`
instead: the hub stays subscribed to the channel every job's terminal event
is also published on (`keys.JOBS_DONE`), and hands a waiter that event's
payload. Per waited job that saves a SUBSCRIBE and an UNSUBSCRIBE (and
waiting for the first to be confirmed) and reading every event of the job;
per finished job, waited or not, it costs one short message.

Pub/sub is at-most-once, so a waiter must never rely on it alone: it
subscribes, *then* reads the job's state (record or Stream), then follows the
queue. `subscribe` returns only once Redis has confirmed the subscription, so
nothing published after that read can be missed. When the hub cannot vouch
for a queue (the connection dropped, or the waiter fell so far behind that
its queue filled up) it clears the queue and puts `RESYNC` in it: the waiter
re-reads the state and goes on.

A subscription can also go quiet without any error: after a Sentinel
failover the hub was seen to go deaf for good (bench/results/
failover-before-hub-guard.md; the cause inside redis-py was not found). So a
read of Redis that does not return within `_READ_DEADLINE_S`, or a ping the
hub publishes on its own channel after a few quiet seconds that does not come
back, makes it start over on a new connection and resync.

Each event is encoded once, as the bytes of its SSE frame, however many
clients receive it: the hub reads its sequence number and type by position
(`core.events.split_event`) and wraps its data, still JSON, without parsing
it. Decoding and re-encoding it for every client was a third of the cost of
a delivery (bench/results/sse.md, section 5).
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core import keys
from core.events import TERMINAL_EVENTS, split_event

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LiveEvent:
    seq: int
    type: str
    frame: bytes  # the whole SSE frame: `id`, `event`, `data` lines

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS

    @property
    def data(self) -> bytes:
        """The event's data, JSON, cut from the frame (for the few readers that parse it)."""
        return self.frame[self.frame.index(b"\r\ndata: ") + 8 : -4]


def live_event(payload: str) -> LiveEvent:
    seq, event_type, data = split_event(payload)
    return LiveEvent(seq, event_type, f"id: {seq}\r\nevent: {event_type}\r\ndata: {data}\r\n\r\n".encode())


RESYNC: Final = None
Event = LiveEvent | None
# A terminal event's payload as published (JSON), or RESYNC.
Done = str | None


# What the hub publishes on `keys.JOBS_DONE` to hear itself; no job has this id.
_PING = "hub-ping"
_READ_DEADLINE_S = 5.0


class Liveness:
    """When a quiet hub should ping itself, and when an unanswered ping means it is deaf.

    A subscription can go silent without an error (see the module's docstring); any
    message proves it alive, and after `quiet_s` without one the hub publishes a
    ping on its own channel. No answer within `quiet_s` more: deaf."""

    def __init__(self, quiet_s: float = 3.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._quiet_s = quiet_s
        self._clock = clock
        self._last_heard = clock()
        self._ping: tuple[str, float] | None = None  # nonce, sent at

    def heard(self) -> None:
        self._last_heard = self._clock()

    def answered(self, nonce: str) -> None:
        if self._ping is not None and self._ping[0] == nonce:
            self._ping = None

    def ping_due(self) -> str | None:
        """A nonce to publish, when the hub has been quiet long enough and no ping is out."""
        now = self._clock()
        if self._ping is not None or now - self._last_heard < self._quiet_s:
            return None
        nonce = uuid.uuid4().hex
        self._ping = (nonce, now)
        return nonce

    def deaf(self) -> bool:
        """True once per ping that went unanswered too long (the next one starts afresh)."""
        if self._ping is None or self._clock() - self._ping[1] < self._quiet_s:
            return False
        self._ping = None
        self._last_heard = self._clock()
        return True


class _Channel:
    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[Event]] = set()
        self.confirmed = asyncio.Event()


class EventHub:
    def __init__(self, redis: aioredis.Redis, queue_size: int = 1024, subscribe_timeout_s: float = 5.0) -> None:
        self._redis = redis
        self._pubsub = redis.pubsub()
        self._channels: dict[str, _Channel] = {}
        self._done: dict[str, set[asyncio.Queue[Done]]] = {}
        self._done_subscribed = asyncio.Event()
        self._queue_size = queue_size
        self._subscribe_timeout_s = subscribe_timeout_s
        self._reader: asyncio.Task[None] | None = None
        self._liveness = Liveness()

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_forever(), name="event-hub-reader")

    async def stop(self) -> None:
        if self._reader:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    @contextlib.asynccontextmanager
    async def until_done(self, job_id: str) -> AsyncIterator[asyncio.Queue[Done]]:
        """A queue that receives the job's terminal event (or RESYNC), from now on."""
        queue: asyncio.Queue[Done] = asyncio.Queue()
        self._done.setdefault(job_id, set()).add(queue)
        try:
            await asyncio.wait_for(self._done_subscribed.wait(), self._subscribe_timeout_s)
            yield queue
        finally:
            waiters = self._done.get(job_id)
            if waiters is not None:
                waiters.discard(queue)
                if not waiters:
                    del self._done[job_id]

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[asyncio.Queue[Event]]:
        name = keys.job_channel(job_id)
        queue: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel()
            channel.queues.add(queue)
            try:
                await self._pubsub.subscribe(name)
            except BaseException:
                self._release(name, queue)
                raise
        else:
            channel.queues.add(queue)
        try:
            await asyncio.wait_for(channel.confirmed.wait(), self._subscribe_timeout_s)
            yield queue
        finally:
            if self._release(name, queue):
                with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
                    await self._pubsub.unsubscribe(name)

    def _release(self, name: str, queue: asyncio.Queue[Event]) -> bool:
        """Forget a queue; True when it was the channel's last one."""
        channel = self._channels.get(name)
        if channel is None:
            return False
        channel.queues.discard(queue)
        if channel.queues:
            return False
        del self._channels[name]
        return True

    async def _read_forever(self) -> None:
        subscribed = False
        while True:
            try:
                # get_message returns within its timeout, or should: after a Sentinel failover
                # the hub was seen to go deaf for good, its reader never coming back from Redis.
                async with asyncio.timeout(_READ_DEADLINE_S):
                    if not subscribed:
                        # Also keeps the connection subscribed to something: redis-py refuses
                        # to read a pub/sub connection that has no subscription.
                        await self._pubsub.subscribe(keys.JOBS_DONE, *self._channels)
                        subscribed = True
                    message = await self._pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
            except TimeoutError:
                subscribed = await self._replace_connection("a read of Redis did not return")
                continue
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                log.warning("event hub lost Redis (%s); resubscribing", e)
                self._lost_redis()
                await asyncio.sleep(0.5)
                continue
            if message is not None:
                self._liveness.heard()
                self._dispatch(message)
            if self._liveness.deaf():
                subscribed = await self._replace_connection("it heard nothing, not even its own ping")
            elif (nonce := self._liveness.ping_due()) is not None:
                with contextlib.suppress(RedisError):
                    await self._redis.publish(keys.JOBS_DONE, f"{_PING} {nonce}")

    def _lost_redis(self) -> None:
        self._done_subscribed.clear()
        self._resync_all()

    async def _replace_connection(self, why: str) -> bool:
        """Start over on a new pub/sub connection (subscribed again by the read loop); returns False."""
        log.warning("event hub: %s; reconnecting", why)
        self._lost_redis()
        old, self._pubsub = self._pubsub, self._redis.pubsub()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_READ_DEADLINE_S):
                await old.aclose()
        return False

    def _dispatch(self, message: dict[str, Any]) -> None:
        name = message["channel"]
        name = name.decode() if isinstance(name, bytes) else name
        if name == keys.JOBS_DONE:
            self._dispatch_done(message)
            return
        channel = self._channels.get(name)
        if channel is None:
            return
        if message["type"] == "subscribe":
            channel.confirmed.set()
        elif message["type"] == "message":
            event = live_event(message["data"])
            for queue in channel.queues:
                _offer(queue, event)

    def _dispatch_done(self, message: dict[str, Any]) -> None:
        if message["type"] == "subscribe":
            # (Re)subscribed: anything published while we were not may be lost.
            self._done_subscribed.set()
            self._resync_all()
        elif message["type"] == "message":
            job_id, _, payload = str(message["data"]).partition(" ")
            if job_id == _PING:
                self._liveness.answered(payload)
                return
            for queue in self._done.get(job_id, ()):
                queue.put_nowait(payload)

    def _resync_all(self) -> None:
        for channel in self._channels.values():
            for queue in channel.queues:
                _offer(queue, RESYNC)
        for waiters in self._done.values():
            for done in waiters:
                done.put_nowait(RESYNC)


def _offer(queue: asyncio.Queue[Event], event: Event) -> None:
    if event is not RESYNC:
        try:
            queue.put_nowait(event)
            return
        except asyncio.QueueFull:
            pass
    # Drop what the waiter has not read and tell it to catch up from Redis:
    # a slow reader costs itself a re-read, never anyone else a delay.
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(RESYNC)
