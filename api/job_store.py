"""The API's reads and writes of job records (asyncio Redis)."""

import asyncio
import hashlib
import json
import time
from typing import cast

import redis.asyncio as aioredis
from fastapi import HTTPException
from redis.exceptions import NoScriptError

from api.auth import Caller
from api.enqueue import TaskMessage
from api.event_hub import RESYNC, EventHub
from core import keys
from core.events import APPEND_EVENT_FUNCTION, APPEND_EVENT_LUA, EventType, append_event_args
from core.jobs import JobLinks, JobStatus, job_from_fields, new_job_fields
from core.settings import Settings

# KEYS: job hash, event stream, channel, the task's queue, the queue's queued
# set. ARGV: ttl_s, stream maxlen, the `queued` event's data, the task message,
# the task-sent event's channel ("" for none) and message, now, the job id,
# then the record's field/value pairs.
# One script rather than a MULTI of five commands: one reply to read instead
# of seven, and as atomic.
CREATE_JOB_LUA = (
    APPEND_EVENT_FUNCTION
    + """
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('EXPIRE', KEYS[1], ARGV[1])
append_event(KEYS[1], KEYS[2], KEYS[3], 'status', ARGV[3], ARGV[2], ARGV[1], {})
redis.call('LPUSH', KEYS[4], ARGV[4])
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
redis.call('ZADD', KEYS[5], ARGV[7], ARGV[8])
return 1
"""
)
_CREATE_JOB_SHA = hashlib.sha1(CREATE_JOB_LUA.encode()).hexdigest()
_QUEUED = json.dumps({"status": JobStatus.queued.value}, separators=(",", ":"))


async def create_job(
    redis: aioredis.Redis,
    settings: Settings,
    job_id: str,
    program: str,
    inputs: dict[str, object],
    model: str | None,
    temperature: float | None,
    created_at_s: float,
    message: TaskMessage,
    owner: str | None = None,
    stream: bool = True,
) -> dict[str, str]:
    """Write the record, its `queued` event and its task `message` in one step; returns the record.

    `owner` (the creating key's owner id) is stored in the record; only that key sees the job.
    """
    fields = new_job_fields(job_id, program, inputs, model, temperature, created_at_s, stream)
    if owner is not None:
        fields["owner"] = owner
    script_keys = [
        keys.job(job_id),
        keys.job_events(job_id),
        keys.job_channel(job_id),
        message.queue,
        keys.queued(message.queue),
    ]
    argv: list[str | int] = [
        settings.job_ttl_s,
        settings.event_stream_maxlen,
        _QUEUED,
        message.message,
        message.event_channel,
        message.event,
        repr(created_at_s),
        job_id,
    ]
    for pair in fields.items():
        argv += pair
    try:
        await redis.evalsha(_CREATE_JOB_SHA, len(script_keys), *script_keys, *argv)
    except NoScriptError:  # Redis restarted (or flushed its scripts) since it last ran
        await redis.eval(CREATE_JOB_LUA, len(script_keys), *script_keys, *argv)
    return fields


async def delete_job(redis: aioredis.Redis, job_id: str) -> None:
    await redis.delete(keys.job(job_id), keys.job_events(job_id))


async def read_job(redis: aioredis.Redis, job_id: str, caller: Caller | None = None) -> dict[str, str] | None:
    """The record, or None when there is none or (given a caller) it is another key's."""
    # decode_responses=True: keys and values are str.
    fields = cast(dict[str, str], await redis.hgetall(keys.job(job_id)))
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
    if caller.owner is None:
        return bool(await redis.exists(keys.job(job_id)))
    fields = cast(dict[str, str], await redis.hgetall(keys.job(job_id)))
    return bool(fields) and caller.can_see(await owner_of(redis, fields))


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
                # The event is `{"seq":..,"type":..,"data":<record>}` (core/events.py); no need to parse it.
                return payload[payload.index('"data":') + 7 : -1]


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
        record = job_from_fields({**fields, **updates}, JobLinks.for_job(job_id)).model_dump(mode="json")
        script_keys, argv = append_event_args(
            job_id,
            EventType.error,
            record,
            maxlen=settings.event_stream_maxlen,
            ttl_s=settings.job_ttl_s,
            job_updates=updates,
        )
        if await redis.eval(APPEND_EVENT_LUA, len(script_keys), *script_keys, *argv) > 0:
            return {**fields, **updates}
        fields = await read_job(redis, job_id) or fields
    raise HTTPException(409, f"job {job_id} already {fields['status']}; nothing to cancel")
