"""The API's reads and writes of batches (asyncio Redis)."""

import json
import time
from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from fastapi import HTTPException

from api import quotas
from api.auth import OPEN, Caller
from api.idempotency import Claim
from api.schemas import BatchOptions
from core import keys, replication, scripts
from core.batches import TERMINAL_BATCH_STATUSES, BatchStatus, item_id, new_batch_fields, unpicked_status
from core.capacity import endpoint_for
from core.settings import Settings
from core.webhooks import submitted_fields


async def create_batch(
    redis: aioredis.Redis,
    settings: Settings,
    batch_id: str,
    program: str,
    items: Sequence[dict[str, Any]],
    options: BatchOptions,
    created_at_s: float,
    caller: Caller = OPEN,
    claim: Claim | None = None,
) -> dict[str, str] | str:
    """Store the record, every item's input and the Idempotency-Key `claim`, and give the batch its turn in
    the bulk rotation of its model's endpoint, in one step, within the `caller`'s quotas (api/quotas.py: 429
    when over one): all or nothing.

    Each item is the program's input fields plus `custom_id` when it has one.
    The caller's owner id (its key's) is stored in the record; its items inherit it. Returns the record,
    or the id of the batch the claim's key already made (then nothing is written).
    """
    expires_at_s = created_at_s + (options.expires_after_s or settings.batch_expires_after_s)
    fields = new_batch_fields(
        batch_id,
        program,
        len(items),
        options.model,
        options.temperature,
        created_at_s,
        options.stream,
        endpoint=endpoint_for(settings, options.model).id,
        owner=caller.owner,
        expires_at_s=expires_at_s,
    )
    if options.webhook_url is not None:
        fields.update(submitted_fields(options.webhook_url))
    fields.update(options.version_fields())
    inputs = [json.dumps(item, separators=(",", ":")) for item in items]
    input_bytes = sum(len(i) for i in inputs)
    quota = quotas.quota_for(settings, caller, input_bytes)
    script_keys = [
        keys.batch(batch_id),
        keys.batch_inputs(batch_id),
        claim.key if claim is not None else "",
        # /metrics reports batches by status from here (api/metrics.py).
        keys.OPEN_BATCHES,
        keys.BATCH_DEADLINES,
        *quota.keys,
    ]
    args: list[scripts.Arg] = [
        settings.job_ttl_s,
        batch_id,
        repr(created_at_s),
        repr(expires_at_s),
        claim.value if claim is not None else "",
        claim.ttl_s if claim is not None else 0,
        keys.batch("%s"),
        *quota.args,
        len(fields),
    ]
    for pair in fields.items():
        args += pair
    created = await scripts.acall(redis, "batch_create", script_keys, [*args, *inputs])
    if isinstance(created, list):
        raise quotas.refused(created, input_bytes, len(inputs))
    if isinstance(created, str) and claim is not None:
        return claim.original(created)
    await replication.confirm(redis, settings, keys.batch(batch_id), settings.job_ttl_s)
    return fields


async def delete_batch(redis: aioredis.Redis, batch_id: str) -> None:
    await redis.delete(keys.batch(batch_id), keys.batch_inputs(batch_id))
    await redis.zrem(keys.OPEN_BATCHES, batch_id)


async def read_batch(redis: aioredis.Redis, batch_id: str, caller: Caller | None = None) -> dict[str, str]:
    """The record; 404 when there is none or (given a caller) it is another key's."""
    fields = cast(dict[str, str], await redis.hgetall(keys.batch(batch_id)))
    if not fields or (caller is not None and not caller.can_see(fields.get("owner"))):
        raise HTTPException(404, f"no batch with id {batch_id!r} (never issued, or expired)")
    return fields


_ITEM_FIELDS = ["status", "custom_id", "result", "error", "attempts", "usage"]


async def read_items(redis: aioredis.Redis, batch: dict[str, str], start: int, stop: int) -> list[dict[str, Any]]:
    """Items `start..stop-1` in submission order; those no worker has picked read as queued (or as their
    batch ended them)."""
    batch_id = batch["id"]
    async with redis.pipeline(transaction=False) as pipe:
        for index in range(start, stop):
            pipe.hmget(keys.job(item_id(batch_id, index)), _ITEM_FIELDS)
        pipe.lrange(keys.batch_inputs(batch_id), start, stop - 1)
        *rows, pending_inputs = await pipe.execute()
    items = []
    for offset, row in enumerate(rows):
        index = start + offset
        status, custom_id, result, error, attempts, usage = row
        if status is None:  # not picked yet: its input is still in the list
            raw = pending_inputs[offset] if offset < len(pending_inputs) else None
            custom_id = json.loads(raw).get("custom_id") if raw else None
            status = unpicked_status(batch, index).value
        items.append(
            {
                "index": index,
                "id": item_id(batch_id, index),
                "custom_id": custom_id,
                "status": status,
                "attempts": int(attempts or 0),
                "result": json.loads(result) if result else None,
                "error": json.loads(error) if error else None,
                "usage": json.loads(usage) if usage else None,
            }
        )
    return items


async def request_cancel(redis: aioredis.Redis, settings: Settings, batch_id: str, caller: Caller) -> dict[str, str]:
    fields = await read_batch(redis, batch_id, caller)
    if BatchStatus(fields["status"]) in TERMINAL_BATCH_STATUSES:
        raise HTTPException(409, f"batch {batch_id} already {fields['status']}; nothing to cancel")
    if not await replication.acall(redis, settings, "batch_cancel", [keys.batch(batch_id)], [repr(time.time())]):
        fields = await read_batch(redis, batch_id)
        raise HTTPException(409, f"batch {batch_id} already {fields['status']}; nothing to cancel")
    return await read_batch(redis, batch_id)
