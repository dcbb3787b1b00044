"""Past jobs of a program chosen by filter, with what feedback said of them: what replays run again and
optimizations learn from.

The filter is the listing's (api/listing.py: program, version, time window,
feedback, a batch's items), walked page after page through the same indexes,
never by reading every record; only the jobs it yields are read, with their
feedback. Only succeeded jobs are chosen: a replay compares outputs, and an
optimization learns from them.
"""

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import redis.asyncio as aioredis
from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field

from api import batch_store, feedback, listing
from api.auth import Caller
from api.feedback import FeedbackEntry
from core import keys
from core.jobs import JobStatus

# Listing pages walked at most for one selection (each looks at up to 2,000 index entries).
_PAGES_MAX = 50


class JobFilter(BaseModel):
    """Which past jobs of the program: every filter optional, newest first, at most `limit`."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(None, description="The version that served them.")
    created_after: datetime | None = None
    created_before: datetime | None = None
    feedback: Literal["any", "corrected", "positive", "none"] | None = Field(
        None,
        description="Jobs with feedback (`any`), with a correction, with a latest score of at least 0.5, or with "
        "no feedback at all (`none`).",
    )
    batch_id: str | None = Field(None, description="Only this batch's items, in the batch's order.")
    limit: int = Field(100, ge=1, le=1000, description="At most this many jobs.")


@dataclass(frozen=True)
class PastJob:
    id: str
    input: dict[str, Any]
    result: dict[str, Any]
    version: str | None
    created_at: float
    entries: list[FeedbackEntry]

    @property
    def correction(self) -> dict[str, Any]:
        return feedback.merged_correction(self.entries)

    @property
    def score(self) -> float | None:
        """The latest feedback score, if any."""
        return self.entries[-1].score if self.entries else None


async def select(redis: aioredis.Redis, caller: Caller, program: str, wanted: JobFilter) -> list[PastJob]:
    """The succeeded jobs of `program` the filter chooses, that the caller may see, newest first."""
    ids = await (
        _batch_ids(redis, caller, program, wanted) if wanted.batch_id else _listed_ids(redis, caller, program, wanted)
    )
    found = await _read(redis, ids)
    kept = [job for job in found if _fits(job, wanted)]
    return kept[: wanted.limit]


async def _listed_ids(redis: aioredis.Redis, caller: Caller, program: str, wanted: JobFilter) -> list[str]:
    faceted = wanted.feedback if wanted.feedback != "none" else None
    filters = listing.Filters(
        JobStatus.succeeded.value, program, wanted.version, None, wanted.created_after, wanted.created_before, faceted
    )
    ids: list[str] = []
    cursor = None
    for _ in range(_PAGES_MAX):
        page = await listing.page(redis, caller, "jobs", filters, cursor, 100)
        ids += page.ids
        # Jobs with feedback are dropped after reading when `none` is asked: read a few more.
        if len(ids) >= 2 * wanted.limit or page.next_cursor is None:
            break
        cursor = page.next_cursor
    return ids


async def _batch_ids(redis: aioredis.Redis, caller: Caller, program: str, wanted: JobFilter) -> list[str]:
    assert wanted.batch_id is not None
    batch = await batch_store.read_batch(redis, wanted.batch_id, caller)
    if batch["program"] != program:
        raise HTTPException(422, f"batch {wanted.batch_id} ran program {batch['program']!r}, not {program!r}")
    ids: list[str] = []
    cursor = None
    for _ in range(_PAGES_MAX):
        page = await listing.item_page(redis, batch, [JobStatus.succeeded], cursor, 1000)
        ids += page.ids
        if len(ids) >= 2 * wanted.limit or page.next_cursor is None:
            break
        cursor = page.next_cursor
    return ids


async def _read(redis: aioredis.Redis, ids: list[str]) -> list[PastJob]:
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(keys.job(job_id), ["input", "result", "program_version", "created_at", "status"])
            pipe.lrange(keys.job_feedback(job_id), 0, -1)
        read: list[Any] = await pipe.execute()
    found = []
    for job_id, fields, entries in zip(ids, read[::2], read[1::2], strict=True):
        raw_input, result, version, created_at, status = fields
        if status != JobStatus.succeeded or not result:  # expired meanwhile
            continue
        found.append(
            PastJob(
                id=job_id,
                input=json.loads(raw_input or "{}"),
                result=json.loads(result),
                version=version,
                created_at=float(created_at or 0),
                entries=[FeedbackEntry.model_validate_json(entry) for entry in entries],
            )
        )
    return found


def _fits(job: PastJob, wanted: JobFilter) -> bool:
    """What the indexes could not check: a batch item's version, time and feedback, and `none`."""
    if wanted.version is not None and job.version != wanted.version:
        return False
    if wanted.created_after is not None and job.created_at < wanted.created_after.timestamp():
        return False
    if wanted.created_before is not None and job.created_at >= wanted.created_before.timestamp():
        return False
    if wanted.feedback == "none":
        return not job.entries
    if wanted.feedback == "corrected":
        return bool(job.correction)
    if wanted.feedback == "positive":
        return job.score is not None and job.score >= 0.5
    if wanted.feedback == "any":
        return bool(job.entries)
    return True
