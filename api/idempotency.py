"""`Idempotency-Key` on submissions: a retried POST returns the original, never a second job.

A request with a key carries a claim: the key (stored hashed) pointing at
the id it is about to create, with a digest of its body. The claim is made
in the same Redis step that creates the record (`job_create` for a job, the
batch's transaction for a batch), so concurrent requests with one key
create one job or batch between them, and the others get its id back. A
repeat with the same body gets that id; the same key with a different body
is a client bug and gets 422.

A claim whose original is gone (its request answered `503` and was undone,
or a Redis failover kept the claim and lost the record) is taken over by
the next request with the key, in that same step: the key never stays stuck
on an id that does not exist.
"""

import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import Header, HTTPException
from redis.exceptions import WatchError

from core import keys

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Repeat a submission safely: the same key and body return the original instead of a new one.",
    ),
]


@dataclass(frozen=True)
class Claim:
    """What a request with an Idempotency-Key writes with its record: `key` -> `<new id> <digest>`."""

    key: str
    new_id: str
    digest: str
    ttl_s: int

    @property
    def value(self) -> str:
        return f"{self.new_id} {self.digest}"

    def original(self, claimed: str) -> str:
        """The id an existing claim points at; 422 when it was made for another body."""
        original_id, _, original_digest = claimed.partition(" ")
        if original_digest != self.digest:
            raise HTTPException(422, "this Idempotency-Key was already used with a different request body")
        return original_id


def body_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def claim_for(idempotency_key: str | None, body: dict[str, Any], new_id: str, ttl_s: int) -> Claim | None:
    """The claim a request makes, or None without a key."""
    if idempotency_key is None:
        return None
    key = keys.idempotency(hashlib.sha256(idempotency_key.encode()).hexdigest())
    return Claim(key, new_id, body_digest(body), ttl_s)


async def release(redis: aioredis.Redis, claim: Claim | None) -> None:
    """Forget a claim whose request was not accepted after all, if it is still this request's."""
    if claim is None:
        return
    async with redis.pipeline(transaction=True) as pipe:
        try:
            await pipe.watch(claim.key)
            if await pipe.get(claim.key) == claim.value:
                pipe.multi()
                pipe.delete(claim.key)
                await pipe.execute()
        except WatchError:
            pass  # another request with the key changed it meanwhile: it is theirs now
