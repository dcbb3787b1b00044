"""`/batches`: submit many inputs at once, watch progress, page through results, cancel.

`POST /batches` takes the default program's items flat; it and
`POST /programs/{name}/batches` submit through the same service
(api/submission.py).
"""

import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, HTTPException, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from api import batch_retry, batch_store, listing
from api.auth import UNAUTHORIZED, CallerDep, SseCallerDep
from api.batch_retry import RetryRequest
from api.deps import RedisDep, SettingsDep, StreamsDep
from api.last_event_id import parse_last_event_id
from api.program_catalog import Catalog
from api.submission import BATCH_RESPONSES, SubmissionDep, add_batch_route
from core.batches import TERMINAL_BATCH_STATUSES, Batch, BatchStatus, batch_from_fields
from core.logging_setup import bind

log = logging.getLogger(__name__)
# The routes that read and cancel batches, the same whatever the catalog holds.
_reads = APIRouter(prefix="/batches")


class BatchItemResult(BaseModel):
    index: int = Field(description="Position in the submitted `items`.")
    id: str = Field(description="The item's job id (`GET /jobs/{id}` works for it).")
    custom_id: str | None
    status: str
    attempts: int
    result: dict[str, object] | None
    error: dict[str, object] | None
    usage: dict[str, int] | None


class BatchResultsPage(BaseModel):
    items: list[BatchItemResult]
    next_cursor: int | None = Field(description="Pass as `cursor` for the next page; null after the last item.")


def build_router(catalog: Catalog) -> APIRouter:
    router = APIRouter(tags=["batches"], responses=UNAUTHORIZED)
    add_batch_route(
        router,
        "/batches",
        catalog.default,
        catalog.default_bodies.batch_create,  # type: ignore[arg-type]
        lambda body: [item.model_dump(mode="json", exclude_unset=True, exclude_none=False) for item in body.items],
        f"Submit a batch of `{catalog.default}` jobs (the default program); answers 202 once every item is "
        "stored, before they are all enqueued.",
    )
    router.include_router(_reads)
    return router


@_reads.get(
    "", response_model=listing.ListPage[Batch], responses={400: {"description": "A cursor this API did not give."}}
)
async def list_batches(
    redis: RedisDep,
    caller: CallerDep,
    status: BatchStatus | None = None,
    program: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> listing.ListPage[Batch]:
    """Batches newest first, filtered; this key's own, an operator's key every key's. Follow `next_cursor`."""
    filters = listing.Filters(status and status.value, program, None, None, created_after, created_before)
    page = await listing.page(redis, caller, "batches", filters, cursor, limit)
    return listing.ListPage[Batch](
        data=await listing.batches(redis, page.ids), next_cursor=page.next_cursor, total=page.total
    )


@_reads.get("/{batch_id}", response_model=Batch, responses={404: {"description": "No batch with this id."}})
async def get_batch(batch_id: str, redis: RedisDep, caller: CallerDep) -> Batch:
    """The batch: status, counts by item status, timestamps, total LM usage."""
    bind(batch_id=batch_id)
    return batch_from_fields(await batch_store.read_batch(redis, batch_id, caller))


@_reads.get("/{batch_id}/results", response_model=BatchResultsPage, responses={404: {"description": "No batch."}})
async def get_batch_results(
    batch_id: str,
    redis: RedisDep,
    settings: SettingsDep,
    caller: CallerDep,
    cursor: Annotated[int, Query(ge=0, description="Index of the first item to return.")] = 0,
    limit: Annotated[int, Query(ge=1, description="Items per page (at most the server's page limit).")] = 100,
) -> BatchResultsPage:
    """Every item's status and result or error, in submission order, a page at a time."""
    bind(batch_id=batch_id)
    batch = await batch_store.read_batch(redis, batch_id, caller)
    total = int(batch["total"])
    limit = min(limit, settings.batch_results_page_max)
    stop = min(cursor + limit, total)
    items = await batch_store.read_items(redis, batch, cursor, stop) if cursor < total else []
    return BatchResultsPage(
        items=[BatchItemResult(**item) for item in items], next_cursor=stop if stop < total else None
    )


@_reads.get(
    "/{batch_id}/results.ndjson",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}, 404: {"description": "No batch."}},
)
async def download_batch_results(
    batch_id: str, redis: RedisDep, settings: SettingsDep, caller: CallerDep
) -> StreamingResponse:
    """All results as one NDJSON download, one item per line in submission order."""
    bind(batch_id=batch_id)
    total = int((await batch_store.read_batch(redis, batch_id, caller))["total"])
    page = settings.batch_results_page_max

    async def lines() -> AsyncIterator[bytes]:
        for start in range(0, total, page):
            # Read again per page: items end while a long download runs.
            batch = await batch_store.read_batch(redis, batch_id)
            items = await batch_store.read_items(redis, batch, start, min(start + page, total))
            yield b"".join(json.dumps(item, separators=(",", ":")).encode() + b"\n" for item in items)

    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="batch-{batch_id}.ndjson"'},
    )


@_reads.post(
    "/{batch_id}/retry",
    status_code=202,
    response_model=Batch,
    responses={
        **BATCH_RESPONSES,
        404: {"description": "No batch."},
        409: {"description": "The batch has not ended yet."},
        422: {"description": "It has no items of those statuses."},
    },
)
async def retry_batch(batch_id: str, submission: SubmissionDep, body: RetryRequest | None = None) -> Batch:
    """A new batch of the same program with the items that ended `failed` or `expired` (or the `statuses`
    given), each with its input and `custom_id`, linked both ways (`retry_of`, `retried_by`)."""
    bind(batch_id=batch_id)
    return await batch_retry.retry(submission, batch_id, (body or RetryRequest()).statuses)


@_reads.post(
    "/{batch_id}/cancel",
    response_model=Batch,
    responses={404: {"description": "No batch."}, 409: {"description": "The batch already finished."}},
)
async def cancel_batch(batch_id: str, redis: RedisDep, settings: SettingsDep, caller: CallerDep) -> Batch:
    """Cancel: items not yet started never run; running ones finish; the batch ends `cancelled`."""
    bind(batch_id=batch_id)
    batch = batch_from_fields(await batch_store.request_cancel(redis, settings, batch_id, caller))
    log.info("batch cancel requested by key %s", caller.name)
    return batch


@_reads.get(
    "/{batch_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        400: {"description": "Malformed Last-Event-ID."},
        404: {"description": "No batch."},
        429: {"description": "This key has as many event streams open as it may."},
    },
)
async def batch_events(
    batch_id: str,
    redis: RedisDep,
    settings: SettingsDep,
    caller: SseCallerDep,
    streams: StreamsDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    """Progress as server-sent events: `progress` (the batch) when counts change, at most a few per second,
    then one terminal `done`. The event id is the batch's version, so a reconnecting client is not sent a
    state it has already seen. A browser's EventSource, which cannot send headers, may pass the key as
    `?api_key=`."""
    bind(batch_id=batch_id)
    seen = parse_last_event_id(last_event_id)
    await batch_store.read_batch(redis, batch_id, caller)
    stream = await streams.open(caller, "batch")
    shutdown = anyio.Event()

    async def events() -> AsyncIterator[ServerSentEvent]:
        nonlocal seen
        try:
            while not shutdown.is_set():
                fields = await batch_store.read_batch(redis, batch_id)
                version = int(fields.get("version", 0))
                batch = batch_from_fields(fields)
                terminal = batch.status in TERMINAL_BATCH_STATUSES
                if version > seen or terminal:
                    seen = version
                    kind = "done" if terminal else "progress"
                    yield ServerSentEvent(data=batch.model_dump_json(), event=kind, id=str(version))
                if terminal:
                    return
                with anyio.move_on_after(settings.batch_progress_interval_s):
                    await shutdown.wait()
        except (RedisError, HTTPException) as e:
            log.warning("batch %s event stream ended early: %s", batch_id, e)

    return EventSourceResponse(
        events(),
        ping=settings.sse_ping_s,
        headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"},
        shutdown_event=shutdown,
        shutdown_grace_period=1.0,
        # Runs once the response has ended, however it ended (client gone included).
        background=BackgroundTask(streams.close, stream),
    )
