"""`/batches`: submit many inputs at once, watch progress, page through results, cancel.

Submitting is shared by `POST /batches` (the default program, flat items)
and `POST /programs/{name}/batches` (any program, each item's input under
`input`); both routes are added by `add_submit_route` (api/main.py).
"""

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import anyio
import redis.asyncio as aioredis
from fastapi import APIRouter, Header, HTTPException, Query, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from api import batch_store, idempotency
from api.auth import UNAUTHORIZED, Caller, CallerDep, SseCallerDep
from api.deps import RedisDep, SettingsDep, StreamsDep
from api.idempotency import IdempotencyKey
from api.last_event_id import parse_last_event_id
from api.metrics import BATCHES_SUBMITTED
from api.schemas import BatchOptions
from api.submission_rate import check_submission
from api.webhook_url import check_webhook_url
from core.batches import TERMINAL_BATCH_STATUSES, Batch, batch_from_fields
from core.jobs import now_s
from core.logging_setup import bind
from core.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(prefix="/batches", tags=["batches"], responses=UNAUTHORIZED)


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


SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"description": "Too many items, or the body is too large; nothing was stored."},
    429: {"description": "Over this key's submission rate; `Retry-After` says when to retry. Nothing stored."},
    503: {"description": "Redis or the queue is unavailable; nothing was stored."},
}

# One batch item as the bulk worker reads it (worker/bulk.py): the input fields, plus `custom_id`.
StoredItem = dict[str, Any]


def add_submit_route(
    router: APIRouter,
    path: str,
    program: str,
    body_model: type[BatchOptions],
    items_of: Callable[[Any], list[StoredItem]],
    doc: str,
) -> None:
    """`POST <path>`: submit a batch of `program` jobs, items taken from a `body_model` body."""

    async def submit_batch(
        body: body_model,  # type: ignore[valid-type]
        response: Response,
        redis: RedisDep,
        settings: SettingsDep,
        caller: CallerDep,
        idempotency_key: IdempotencyKey = None,
    ) -> Batch:
        options: BatchOptions = body
        return await submit(program, items_of(body), options, response, redis, settings, caller, idempotency_key)

    submit_batch.__doc__ = doc
    router.add_api_route(
        path,
        submit_batch,
        methods=["POST"],
        status_code=status.HTTP_202_ACCEPTED,
        response_model=Batch,
        summary=f"Submit a {program} batch",
        responses=SUBMIT_RESPONSES,
    )


async def submit(
    program: str,
    items: list[StoredItem],
    options: BatchOptions,
    response: Response,
    redis: aioredis.Redis,
    settings: Settings,
    caller: Caller,
    idempotency_key: str | None,
) -> Batch:
    """Store the batch and answer once every item is stored; bulk workers take its items in turn."""
    max_items = settings.batch_max_items
    if caller.owner is not None and settings.key_batch_max_items > 0:
        max_items = min(max_items, settings.key_batch_max_items)
    if len(items) > max_items:
        raise HTTPException(413, f"{len(items)} items; a batch may hold at most {max_items}")
    await check_webhook_url(options.webhook_url, settings)
    await check_submission(redis, settings, caller)
    batch_id = uuid.uuid4().hex
    body = {"program": program, "items": items, **options.model_dump()}
    claim = idempotency.claim_for(caller.scoped(idempotency_key), body, batch_id, settings.idempotency_ttl_s)
    bind(batch_id=batch_id)
    created_at = now_s()
    expires_after_s = options.expires_after_s or settings.batch_expires_after_s
    try:
        created = await batch_store.create_batch(
            redis,
            settings,
            batch_id,
            program,
            items,
            options.model,
            options.temperature,
            created_at,
            caller=caller,
            stream=options.stream,
            expires_at_s=created_at + expires_after_s,
            webhook_url=options.webhook_url,
            claim=claim,
        )
    except RedisError:
        # Answered 503 (api/main.py): nothing may stay of a batch its client was told was not accepted.
        with contextlib.suppress(RedisError):
            await batch_store.delete_batch(redis, batch_id)
            await idempotency.release(redis, claim)
        raise
    if isinstance(created, str):
        bind(batch_id=created)
        response.headers["Idempotent-Replayed"] = "true"
        return batch_from_fields(await batch_store.read_batch(redis, created, caller))
    fields = created
    BATCHES_SUBMITTED.labels(caller.name).inc()
    log.info("batch of %d items submitted (program %s, key %s)", len(items), program, caller.name)
    response.headers["Location"] = f"/batches/{batch_id}"
    # The batch as accepted, even if a bulk worker has already picked an item: what the client polls from.
    return batch_from_fields(fields)


@router.get("/{batch_id}", response_model=Batch, responses={404: {"description": "No batch with this id."}})
async def get_batch(batch_id: str, redis: RedisDep, caller: CallerDep) -> Batch:
    """The batch: status, counts by item status, timestamps, total LM usage."""
    bind(batch_id=batch_id)
    return batch_from_fields(await batch_store.read_batch(redis, batch_id, caller))


@router.get("/{batch_id}/results", response_model=BatchResultsPage, responses={404: {"description": "No batch."}})
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


@router.get(
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


@router.post(
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


@router.get(
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
