"""`Idempotency-Key` on submissions: a retried POST returns the original, never a second job.

The first request with a key claims it (SET NX, with a TTL) for the id it is
about to create, together with a digest of its body. A repeat with the same
body gets that id back; the same key with a different body is a client bug
and gets 422. Keys are stored hashed.

A claim whose original was never stored (its request answered `503` and was
undone, or a Redis failover kept the claim and lost the record) is taken
over by the repeat, which then creates its own: the key never stays stuck
on an id that does not exist.
"""

import hashlib
import json
from collections.abc import Callable
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import Header, HTTPException

from core import keys

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Repeat a submission safely: the same key and body return the original instead of a new one.",
    ),
]


def body_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _key(idempotency_key: str) -> str:
    return keys.idempotency(hashlib.sha256(idempotency_key.encode()).hexdigest())


async def claim(
    redis: aioredis.Redis,
    idempotency_key: str | None,
    digest: str,
    new_id: str,
    ttl_s: int,
    record_key: Callable[[str], str],
) -> str | None:
    """None when this request is new (the key now points at `new_id`); else the original id.

    `record_key` names the original's record: one that does not exist is taken over."""
    if idempotency_key is None:
        return None
    key, value = _key(idempotency_key), f"{new_id} {digest}"
    if await redis.set(key, value, nx=True, ex=ttl_s):
        return None
    existing = await redis.get(key)
    if existing is None:  # expired in between: this request is new after all
        return await claim(redis, idempotency_key, digest, new_id, ttl_s, record_key)
    original_id, original_digest = str(existing).split(" ", 1)
    if original_digest != digest:
        raise HTTPException(422, "this Idempotency-Key was already used with a different request body")
    if await redis.exists(record_key(original_id)):
        return original_id
    # Taken over only if nobody else took it over first (SET ... GET answers what it replaced).
    replaced = await redis.set(key, value, xx=True, ex=ttl_s, get=True)
    if replaced in (None, existing):
        return None
    await redis.set(key, replaced, xx=True, ex=ttl_s)
    return str(replaced).split(" ", 1)[0]


async def release(redis: aioredis.Redis, idempotency_key: str | None) -> None:
    """Forget a claim whose request was not accepted after all."""
    if idempotency_key is not None:
        await redis.delete(_key(idempotency_key))
