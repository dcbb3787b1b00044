"""The API's reads and writes of job records (asyncio Redis)."""

import asyncio
import json
import re
import time
from typing import cast

import redis.asyncio as aioredis
from fastapi import HTTPException

from api import quotas
from api.auth import OPEN, Caller
from api.enqueue import TaskMessage
from api.event_hub import RESYNC, EventHub
from api.idempotency import Claim
from api.schemas import JobOptions
from core import keys, replication, scripts
from core.batches import item_fields, unpicked_status
from core.events import split_event
from core.jobs import JobLinks, JobStatus, job_from_fields, new_job_fields
from core.settings import Settings
from core.webhooks import submitted_fields

_QUEUED = json.dumps({"status": JobStatus.queued.value}, separators=(",", ":"))
_ITEM_ID = re.compile(r"^([0-9a-f]{32})-(\d{1,9})$")


async def create_job(
    redis: aioredis.Redis,
    settings: Settings,
    job_id: str,
    program: str,
    inputs: dict[str, object],
    options: JobOptions,
    created_at_s: float,
    message: TaskMessage,
    caller: Caller = OPEN,
    claim: Claim | None = None,
) -> dict[str, str] | str:
    """Write the record, its `queued` event, its task `message` and its Idempotency-Key `claim` in one step,
    within the `caller`'s quotas (api/quotas.py: 429 when over one); returns the record, or the id of the job
    the claim's key already made (then nothing is written).

    The caller's owner id (its key's) is stored in the record; only that key sees the job.
    """
    expires_at_s = created_at_s + (options.expires_after_s or settings.job_expires_after_s)
    fields = new_job_fields(
        job_id, program, inputs, options.model, options.temperature, created_at_s, options.stream, expires_at_s
    )
    quota = quotas.quota_for(settings, caller, len(fields["input"]))
    if caller.owner is not None:
        fields["owner"] = caller.owner
    if options.webhook_url is not None:
        fields.update(submitted_fields(options.webhook_url))
    fields.update(options.version_fields())
    script_keys = [
        keys.job(job_id),
        keys.job_events(job_id),
        keys.job_channel(job_id),
        message.queue,
        keys.queued(message.queue),
        keys.DEADLINES,
        claim.key if claim is not None else "",
        *quota.keys,
    ]
    argv: list[scripts.Arg] = [
        settings.job_ttl_s,
        settings.event_stream_maxlen,
        _QUEUED,
        message.message,
        message.event_channel,
        message.event,
        repr(created_at_s),
        job_id,
        repr(expires_at_s),
        claim.value if claim is not None else "",
        claim.ttl_s if claim is not None else 0,
        keys.job("%s"),
        *quota.args,
    ]
    for pair in fields.items():
        argv += pair
    created = await replication.acall(redis, settings, "job_create", script_keys, argv)
    if isinstance(created, list):
        raise quotas.refused(created, len(fields["input"]))
    if isinstance(created, str) and claim is not None:
        return claim.original(created)
    return fields


async def delete_job(redis: aioredis.Redis, job_id: str) -> None:
    await redis.delete(keys.job(job_id), keys.job_events(job_id))


async def read_job(redis: aioredis.Redis, job_id: str, caller: Caller | None = None) -> dict[str, str] | None:
    """The record, or None when there is none or (given a caller) it is another key's. A batch item no
    worker has picked yet has no record: it is described from its batch (`core.batches.item_fields`)."""
    # decode_responses=True: keys and values are str.
    fields = cast(dict[str, str], await redis.hgetall(keys.job(job_id))) or await item_record(redis, job_id)
    if not fields:
        return None
    if caller is not None and not caller.can_see(await owner_of(redis, fields)):
        return None
    return fields


async def owner_of(redis: aioredis.Redis, fields: dict[str, str]) -> str | None:
    """A job's owner; a batch item inherits its batch's (the bulk worker that creates items knows none)."""
    if "owner" in fields:
        return fields["owner"]
    if fields.get("batch"):
        owner = await redis.hget(keys.batch(fields["batch"]), "owner")
        return str(owner) if owner is not None else None
    return None


async def visible(redis: aioredis.Redis, job_id: str, caller: Caller) -> bool:
    """Whether the job exists for this caller: what the event stream checks before it opens."""
    if caller.owner is None and await redis.exists(keys.job(job_id)):
        return True
    return await read_job(redis, job_id, caller) is not None


async def item_record(redis: aioredis.Redis, job_id: str) -> dict[str, str] | None:
    """A batch item's record; for one no worker has picked yet, its record as it will begin (or as its batch
    ended it). Called after a read found no record: a worker may have picked the item since, so its record is
    read again last, after the batch, and wins."""
    match = _ITEM_ID.match(job_id)
    if match is None:
        return None
    batch_id, index = match.group(1), int(match.group(2))
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.batch(batch_id))
        pipe.lindex(keys.batch_inputs(batch_id), index)
        pipe.hgetall(keys.job(job_id))
        batch, raw_input, record = await pipe.execute()
    if record:
        return cast(dict[str, str], record)
    if not batch or index >= int(batch["total"]):
        return None
    fields = item_fields(batch_id, index, raw_input or "{}", batch)
    status = unpicked_status(batch, index)
    fields["status"] = status.value
    if status.is_terminal and batch.get("finished_at"):
        fields["finished_at"] = batch["finished_at"]
    return fields


async def wait_until_finished(
    redis: aioredis.Redis, hub: EventHub, job_id: str, timeout_s: float
) -> dict[str, str] | str | None:
    """The job once it is terminal, or as it stands after `timeout_s`: its record's fields (None if it has
    none), or the public record as JSON, straight from its terminal event."""
    deadline = time.monotonic() + timeout_s
    async with hub.until_done(job_id) as done:
        while True:
            fields = await read_job(redis, job_id)
            if fields is None or JobStatus(fields["status"]).is_terminal:
                return fields
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    payload = await done.get()
            except TimeoutError:
                return await read_job(redis, job_id)
            if payload is not RESYNC:
                return split_event(payload)[2]


async def cancel_job(redis: aioredis.Redis, settings: Settings, job_id: str, caller: Caller) -> dict[str, str]:
    """Move a job that has not finished to `cancelled`, with its terminal event.

    The worker running it (if any) learns of it at its next write, which the
    event script refuses for a finished job; a queued job's message finds the
    job finished and is dropped.
    """
    fields = await read_job(redis, job_id, caller)
    if fields is None:
        raise HTTPException(404, f"no job with id {job_id!r} (never issued, or expired)")
    if not JobStatus(fields["status"]).is_terminal:
        updates = {"status": JobStatus.cancelled.value, "finished_at": repr(time.time())}
        record = job_from_fields({**fields, **updates}, JobLinks.for_job(job_id)).model_dump_json()
        script_keys = keys.job_function_keys(job_id, settings.interactive_queue)
        argv: list[scripts.Arg] = [record, settings.event_stream_maxlen, settings.job_ttl_s, len(updates)]
        for pair in updates.items():
            argv += pair
        # A batch item no worker has picked has no record yet: it is created, cancelled.
        for pair in fields.items():
            argv += pair
        if await replication.acall(redis, settings, "job_cancel", script_keys, argv) > 0:
            return {**fields, **updates}
        fields = await read_job(redis, job_id) or fields
    raise HTTPException(409, f"job {job_id} already {fields['status']}; nothing to cancel")
