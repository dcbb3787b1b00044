"""`GET /jobs/{id}/events`: the job's events as server-sent events, resumable.

Order of operations is what makes it lossless: subscribe to the job's live
channel first, then replay the Stream after the client's `Last-Event-ID`,
then follow live events, dropping any sequence already sent. A gap in the
live sequence (pub/sub dropped something, or this client fell behind) sends
us back to the Stream. The response ends after the terminal event.

Events arrive as ready-made SSE frames (api/event_hub.py); whatever has
queued up for a client by the time it is written to goes out as one write.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Annotated, Any, cast

import anyio
import redis.asyncio as aioredis
from fastapi import APIRouter, Header, HTTPException, Query
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from api import job_store
from api.auth import UNAUTHORIZED, SseCallerDep
from api.deps import HubDep, RedisDep, SettingsDep, StreamsDep
from api.event_hub import RESYNC, Event, EventHub, LiveEvent, live_event
from api.last_event_id import parse_last_event_id
from core import keys
from core.jobs import JobStatus
from core.logging_setup import bind

log = logging.getLogger(__name__)
router = APIRouter(tags=["jobs"], responses=UNAUTHORIZED)

_REPLAY_BATCH = 500
# How long a stream waits on silence before reading the Stream again (and checking that its job still exists).
_IDLE_CHECK_S = 30.0
# Put in a stream's queue when the server shuts down.
_SHUTDOWN: Event = LiveEvent(-1, "shutdown", b"")


@contextlib.asynccontextmanager
async def _task(coro: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run `coro` alongside the block; cancel it when the block ends."""
    task = asyncio.create_task(coro)
    try:
        yield
    finally:
        task.cancel()


async def _replay(redis: aioredis.Redis, job_id: str, after: int) -> list[LiveEvent]:
    entries = await redis.xrange(keys.job_events(job_id), min=f"{after + 1}-0", max="+", count=_REPLAY_BATCH)
    return [live_event(fields["e"]) for _, fields in cast(list[tuple[str, dict[str, str]]], entries)]


async def _finished_before(redis: aioredis.Redis, job_id: str, seq: int) -> bool:
    """True when the job is over and the client already has (or skipped past) its last event. A batch item
    no worker has picked has no events yet: it is not over unless its batch ended it."""
    status, last_seq = cast(list[str | None], await redis.hmget(keys.job(job_id), ["status", "seq"]))
    if status is None:
        unpicked = await job_store.unpicked_item(redis, job_id)
        return unpicked is None or JobStatus(unpicked["status"]).is_terminal
    return JobStatus(status).is_terminal and int(last_seq or 0) <= seq


async def _events(
    redis: aioredis.Redis, hub: EventHub, job_id: str, after: int, shutdown: anyio.Event
) -> AsyncIterator[bytes]:
    try:
        async for batch in follow(redis, hub, job_id, after, shutdown):
            yield b"".join(e.frame for e in batch)
    except (RedisError, TimeoutError) as e:
        # The response has started, so no status code can say it: end the
        # stream and let the client reconnect with its Last-Event-ID.
        log.warning("event stream of job %s ended early: %s", job_id, e)


async def _end_on_shutdown(shutdown: anyio.Event, live: "asyncio.Queue[Event]") -> None:
    await shutdown.wait()
    live.put_nowait(_SHUTDOWN)


async def follow(
    redis: aioredis.Redis, hub: EventHub, job_id: str, after: int, shutdown: anyio.Event
) -> AsyncIterator[list[LiveEvent]]:
    """The job's events after `after`, in order, each once, in batches of what was ready together; ends after
    the terminal event, when the job is gone, or on `shutdown`. Raises RedisError and TimeoutError.
    Also followed by the OpenAI-compatible stream (api/routes/openai_chat.py)."""
    async with hub.subscribe(job_id) as live, _task(_end_on_shutdown(shutdown, live)):
        last = after
        while True:
            # Catch up from the Stream.
            while batch := await _replay(redis, job_id, last):
                for i, replayed in enumerate(batch):
                    if replayed.terminal:
                        yield batch[: i + 1]
                        return
                last = batch[-1].seq
                yield batch
            if await _finished_before(redis, job_id, last):
                return
            # Follow live events until something forces a re-read.
            while True:
                # A timeout only when the queue is empty: `wait_for` on every
                # event made a Task per event per client, and the garbage it
                # left was most of the API's CPU at 1,000 clients.
                if live.empty():
                    try:
                        async with asyncio.timeout(_IDLE_CHECK_S):
                            event: Event = await live.get()
                    except TimeoutError:
                        # Silence: read the Stream again, which also ends a stream whose job is gone.
                        break
                else:
                    event = live.get_nowait()
                ready: list[LiveEvent] = []
                end = resync = False
                while True:
                    if event is _SHUTDOWN:
                        # End the response properly so the client reconnects (with
                        # its Last-Event-ID) to another API process.
                        end = True
                    elif event is RESYNC or event.seq > last + 1:
                        resync = True
                    elif event.seq > last:
                        last = event.seq
                        ready.append(event)
                        end = event.terminal
                    if end or resync or live.empty():
                        break
                    event = live.get_nowait()
                if ready:
                    yield ready
                if end:
                    return
                if resync:
                    break


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "`status`, `token`, then `result` or `error`."},
        404: {"description": "No job with this id."},
        400: {"description": "Malformed Last-Event-ID."},
        429: {"description": "This key has as many event streams open as it may."},
    },
)
async def job_events(
    job_id: str,
    redis: RedisDep,
    hub: HubDep,
    settings: SettingsDep,
    caller: SseCallerDep,
    streams: StreamsDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: Annotated[
        str | None, Query(description="For clients that cannot set the Last-Event-ID header.")
    ] = None,
) -> EventSourceResponse:
    """Stream the job's events: replays what the client has not seen, follows live, ends after the result.
    A browser's EventSource, which cannot send headers, may pass the key as `?api_key=`."""
    bind(job_id=job_id)
    after = parse_last_event_id(last_event_id_header, last_event_id)
    if not await job_store.visible(redis, job_id, caller):
        raise HTTPException(404, f"no job with id {job_id!r} (never issued, or expired)")
    stream = await streams.open(caller, "job")
    shutdown = anyio.Event()
    return EventSourceResponse(
        _events(redis, hub, job_id, after, shutdown),
        shutdown_event=shutdown,
        shutdown_grace_period=1.0,
        ping=settings.sse_ping_s,
        headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"},
        send_timeout=settings.sse_send_timeout_s,
        # Runs once the response has ended, however it ended (client gone included).
        background=BackgroundTask(streams.close, stream),
    )
