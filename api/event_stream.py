"""Following one job's events, resumable and lossless: what every event stream of a job reads.

`follow` yields the job's events after a given sequence, in order and each
once, until its terminal event (`GET /jobs/{id}/events`, the OpenAI-compatible
stream). The order of its steps is what makes it lossless:

1. **Subscribe** to the job's live channel (api/event_hub.py) before reading
   anything, so nothing published from now on can be missed.
2. **Catch up** from the job's Stream after the last sequence sent.
3. **Follow live** events, dropping any sequence already sent. A gap in the
   live sequence (pub/sub dropped something, or this client fell behind),
   or a silence of `_IDLE_CHECK_S`, sends it back to step 2, which also ends
   a stream whose job is gone.

It ends after the terminal event, when the job is gone, or on `shutdown`
(the server is stopping: the client reconnects with its Last-Event-ID to
another API process).
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, cast

import anyio
import redis.asyncio as aioredis

from api import job_store
from api.event_hub import RESYNC, Event, EventHub, LiveEvent, live_event
from core import keys
from core.jobs import JobStatus

_REPLAY_BATCH = 500
# How long a stream waits on silence before reading the Stream again (and checking that its job still exists).
_IDLE_CHECK_S = 30.0
# Put in a stream's queue when the server shuts down.
_SHUTDOWN: Event = LiveEvent(-1, "shutdown", b"")


@dataclass
class _Cursor:
    last: int  # the last sequence sent
    ended: bool = False  # the terminal event was sent, or the server is shutting down


async def follow(
    redis: aioredis.Redis, hub: EventHub, job_id: str, after: int, shutdown: anyio.Event
) -> AsyncIterator[list[LiveEvent]]:
    """The job's events after `after`, in batches of what was ready together (module docstring).
    Raises RedisError and TimeoutError."""
    cursor = _Cursor(after)
    async with hub.subscribe(job_id) as live, _alongside(_end_on_shutdown(shutdown, live)):
        while True:
            async for batch in _catch_up(redis, job_id, cursor):
                yield batch
            if cursor.ended or await _finished_before(redis, job_id, cursor.last):
                return
            async for batch in _live(live, cursor):
                yield batch
            if cursor.ended:
                return


async def _catch_up(redis: aioredis.Redis, job_id: str, cursor: _Cursor) -> AsyncIterator[list[LiveEvent]]:
    """What the Stream holds after the cursor, up to and including a terminal event."""
    while batch := await _replay(redis, job_id, cursor.last):
        for i, replayed in enumerate(batch):
            if replayed.terminal:
                cursor.last, cursor.ended = replayed.seq, True
                yield batch[: i + 1]
                return
        cursor.last = batch[-1].seq
        yield batch


async def _live(live: "asyncio.Queue[Event]", cursor: _Cursor) -> AsyncIterator[list[LiveEvent]]:
    """Live events in order, until the stream ends, a gap calls for the Stream, or a silence."""
    while (event := await _next_or_silence(live)) is not None:
        ready, resync = _ready(event, live, cursor)
        if ready:
            yield ready
        if resync or cursor.ended:
            return


async def _next_or_silence(live: "asyncio.Queue[Event]") -> Event | None:
    """The next live event; None after `_IDLE_CHECK_S` of silence."""
    if not live.empty():
        return live.get_nowait()
    # A timeout only when the queue is empty: `wait_for` on every event made a Task per event per client,
    # and the garbage it left was most of the API's CPU at 1,000 clients.
    try:
        async with asyncio.timeout(_IDLE_CHECK_S):
            return await live.get()
    except TimeoutError:
        return None


def _ready(event: Event, live: "asyncio.Queue[Event]", cursor: _Cursor) -> tuple[list[LiveEvent], bool]:
    """`event` and whatever else is queued, in order and new to this stream; True when a gap (or a dropped
    subscription) calls for the Stream."""
    ready: list[LiveEvent] = []
    while True:
        if event is _SHUTDOWN:
            cursor.ended = True
            return ready, False
        if event is RESYNC or event.seq > cursor.last + 1:
            return ready, True
        if event.seq > cursor.last:
            cursor.last = event.seq
            ready.append(event)
            if event.terminal:
                cursor.ended = True
                return ready, False
        if live.empty():
            return ready, False
        event = live.get_nowait()


async def _replay(redis: aioredis.Redis, job_id: str, after: int) -> list[LiveEvent]:
    entries = await redis.xrange(keys.job_events(job_id), min=f"{after + 1}-0", max="+", count=_REPLAY_BATCH)
    return [live_event(fields["e"]) for _, fields in cast(list[tuple[str, dict[str, str]]], entries)]


async def _finished_before(redis: aioredis.Redis, job_id: str, seq: int) -> bool:
    """True when the job is over and the client already has (or skipped past) its last event. A batch item
    no worker has picked has no events yet: it is not over unless its batch ended it."""
    status, last_seq = cast(list[str | None], await redis.hmget(keys.job(job_id), ["status", "seq"]))
    if status is None:
        item = await job_store.item_record(redis, job_id)
        if item is None:
            return True
        status, last_seq = item["status"], item.get("seq")
    return JobStatus(status).is_terminal and int(last_seq or 0) <= seq


async def _end_on_shutdown(shutdown: anyio.Event, live: "asyncio.Queue[Event]") -> None:
    await shutdown.wait()
    live.put_nowait(_SHUTDOWN)


@contextlib.asynccontextmanager
async def _alongside(coro: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run `coro` alongside the block; cancel it when the block ends."""
    task = asyncio.create_task(coro)
    try:
        yield
    finally:
        task.cancel()
