"""`GET /jobs/{id}/events`: the job's events as server-sent events, resumable.

What it sends, and why nothing is lost or repeated, is api/event_stream.py.
Events arrive as ready-made SSE frames (api/event_hub.py); whatever has
queued up for a client by the time it is written to goes out as one write.
"""

import logging
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import redis.asyncio as aioredis
from fastapi import APIRouter, Header, HTTPException, Query
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from api import job_store
from api.auth import UNAUTHORIZED, SseCallerDep
from api.deps import HubDep, RedisDep, SettingsDep, StreamsDep
from api.event_hub import EventHub
from api.event_stream import follow
from api.last_event_id import parse_last_event_id
from core.logging_setup import bind

log = logging.getLogger(__name__)
router = APIRouter(tags=["jobs"], responses=UNAUTHORIZED)


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
