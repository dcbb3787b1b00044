"""Listing jobs and batches: filters, newest first, a cursor per page, each key its own (operators' keys all).

Every listing walks the indexes the Redis functions keep in the same step
that changes a status (core/lua/indexes.lua), never the records: one sorted
set per filter, scored by creation time. A page walks the filter with the
fewest ids and checks the others by membership (`index_page`), reading at
most `_SCAN_CAP` entries, so a page costs the same whether Redis holds ten
thousand jobs or a million; filters that match little give a short page and
a cursor. The cursor is the last entry looked at (its time and id): pages
never repeat or skip an entry, even while new jobs arrive.

A batch's items are listed in their batch's order instead: those with a
record from the batch's per-status sets, those no worker picked from the
batch itself (core/batches.py).
"""

import base64
import binascii
import itertools
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar, cast

import redis.asyncio as aioredis
from fastapi import HTTPException
from pydantic import BaseModel, Field

from api import job_store
from api.auth import Caller
from core import keys, scripts
from core.batches import Batch, batch_from_fields, item_id, unpicked_status
from core.jobs import Job, JobLinks, JobStatus, job_from_fields

# Entries of the walked index one page looks at, at most.
_SCAN_CAP = 2000
# A listing's records: jobs or batches.
Listed = TypeVar("Listed", Job, Batch)


class ListPage(BaseModel, Generic[Listed]):
    """A page of a listing, as `GET /jobs` and `GET /batches` answer it."""

    data: list[Listed]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null after the last.")
    total: int | None = Field(description="How many match, where the indexes can say without reading records.")


# What `feedback=` filters on (core/lua/feedback.lua keeps these facets): any feedback, a correction, a
# latest score of at least a half.
FEEDBACK_FACETS = {"any": "feedback", "corrected": "corrected", "positive": "positive"}


@dataclass(frozen=True)
class Filters:
    status: str | None = None
    program: str | None = None
    version: str | None = None
    error: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    feedback: str | None = None  # a key of FEEDBACK_FACETS

    def facets(self) -> list[str]:
        found = [f"status:{self.status}"] if self.status else []
        if self.program:
            found.append(f"program:{self.program}")
            if self.version:
                found.append(f"version:{self.program}@{self.version}")
            if self.feedback:
                found.append(f"{FEEDBACK_FACETS[self.feedback]}:{self.program}")
        elif self.version or self.feedback:
            raise HTTPException(422, "version and feedback filters need program: they are a program's")
        if self.error:
            found.append(f"error:{self.error}")
        return found or ["all"]


@dataclass(frozen=True)
class Page:
    ids: list[str]
    next_cursor: str | None
    total: int | None  # how many match; None where counting would mean reading more than indexes


def encode_cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """(score, id) of a cursor this API gave; 400 for anything else."""
    try:
        score, _, last_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(" ")
        float(score)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise HTTPException(400, "cursor is not one this API gave (pass `next_cursor` as it came)") from None
    return score, last_id


def _scope(caller: Caller) -> str:
    return keys.EVERY_SCOPE if caller.admin else caller.bucket


async def page(
    redis: aioredis.Redis, caller: Caller, kind: str, filters: Filters, cursor: str | None, limit: int
) -> Page:
    """A page of `kind` ('jobs', 'batches') ids the caller may see, newest first."""
    indexes = [keys.index(_scope(caller), kind, facet) for facet in filters.facets()]
    async with redis.pipeline(transaction=False) as pipe:
        for index in indexes:
            pipe.zcard(index)
        sizes = cast(list[int], await pipe.execute())
    # The smallest index is walked; the others are checked by membership.
    indexes = [index for _, index in sorted(zip(sizes, indexes, strict=True))]
    top, cursor_id = "+inf", ""
    if cursor is not None:
        top, cursor_id = decode_cursor(cursor)
    if filters.created_before is not None and filters.created_before.timestamp() < float(top):
        top, cursor_id = repr(filters.created_before.timestamp()), ""
    bottom = repr(filters.created_after.timestamp()) if filters.created_after is not None else "-inf"
    ids, last = await scripts.acall(redis, "index_page", indexes, [top, cursor_id, bottom, limit, _SCAN_CAP])
    return Page(
        [str(i) for i in ids], encode_cursor(str(last)) if last else None, await _total(redis, indexes, filters)
    )


async def _total(redis: aioredis.Redis, indexes: list[str], filters: Filters) -> int | None:
    ranged = filters.created_after is not None or filters.created_before is not None
    if len(indexes) == 1:
        low = repr(filters.created_after.timestamp()) if filters.created_after else "-inf"
        high = repr(filters.created_before.timestamp()) if filters.created_before else "+inf"
        return int(await redis.zcount(indexes[0], low, high)) if ranged else int(await redis.zcard(indexes[0]))
    if ranged:
        return None
    return int(await redis.execute_command("ZINTERCARD", len(indexes), *indexes))


async def jobs(redis: aioredis.Redis, ids: list[str]) -> list[Job]:
    """The jobs of a page, as `GET /jobs/{id}` has them; one expired meanwhile is left out."""
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hgetall(keys.job(job_id))
        found = cast(list[dict[str, str]], await pipe.execute())
    listed = []
    for job_id, fields in zip(ids, found, strict=True):
        # A batch item no worker has picked has no record: described from its batch.
        fields = fields or await job_store.item_record(redis, job_id) or {}
        if fields:
            listed.append(job_from_fields(fields, JobLinks.for_job(job_id)))
    return listed


async def batches(redis: aioredis.Redis, ids: list[str]) -> list[Batch]:
    async with redis.pipeline(transaction=False) as pipe:
        for batch_id in ids:
            pipe.hgetall(keys.batch(batch_id))
        found = cast(list[dict[str, str]], await pipe.execute())
    return [batch_from_fields(fields) for fields in found if fields]


async def item_page(
    redis: aioredis.Redis, batch: dict[str, str], statuses: list[JobStatus], cursor: str | None, limit: int
) -> Page:
    """A batch's items in `statuses`, in the batch's order: those with a record from the batch's per-status
    sets, those no worker picked from the batch itself."""
    after = -1
    if cursor is not None:
        position, _ = decode_cursor(cursor)
        after = int(float(position))
    indexes = await batch_item_indexes(redis, batch, statuses, after, limit + 1)
    more = len(indexes) > limit
    indexes = indexes[:limit]
    batch_id = batch["id"]
    next_cursor = encode_cursor(f"{indexes[-1]} {batch_id}") if more else None
    counts = {status: int(batch.get(f"n_{status.value}", 0)) for status in JobStatus}
    return Page([item_id(batch_id, i) for i in indexes], next_cursor, sum(counts[s] for s in statuses))


async def batch_item_indexes(
    redis: aioredis.Redis, batch: dict[str, str], statuses: list[JobStatus], after: int, limit: int
) -> list[int]:
    """The indexes of a batch's items in `statuses` after `after`, in order, at most `limit`."""
    batch_id, total = batch["id"], int(batch["total"])
    async with redis.pipeline(transaction=False) as pipe:
        for status in statuses:
            pipe.zrangebyscore(keys.batch_items(batch_id, status.value), f"({after}", "+inf", start=0, num=limit)
        found = {int(i) for indexes in await pipe.execute() for i in indexes}
    # Never picked: from the pick cursor on (queued), or from where the batch's end settled them.
    unpicked_from = int(batch.get("settled_from") or batch.get("cursor") or 0)
    unpicked = (i for i in range(max(unpicked_from, after + 1), total) if unpicked_status(batch, i) in statuses)
    candidates = list(itertools.islice(unpicked, limit))
    if candidates:
        async with redis.pipeline(transaction=False) as pipe:
            for i in candidates:
                pipe.exists(keys.job(item_id(batch_id, i)))
            has_record = await pipe.execute()
        found |= {i for i, exists in zip(candidates, has_record, strict=True) if not exists}
    return sorted(found)[:limit]
