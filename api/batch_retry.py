"""Running a batch's failures again: `POST /batches/{id}/retry` (and OpenAI-compatible batches, api/openai_batches.py).

The new batch is an ordinary submission (api/submission.py) of the same
program and options, holding exactly the items of the chosen statuses, in
their order, each with its input and `custom_id`: an item that ran has both
in its record; one no worker picked is read from the batch's inputs, which
a cancelled or expired batch keeps until its TTL. The two are linked both
ways (`retry_of`, `retried_by`). A retry is submitted under an
Idempotency-Key of its own (the batch and the statuses), so retrying twice,
or two clients at once, makes one new batch.
"""

import json
from typing import Any, cast

from fastapi import HTTPException
from pydantic import BaseModel, Field

from api import batch_store, listing
from api.schemas import BatchOptions
from api.submission import StoredItem, Submission
from core import keys
from core.batches import TERMINAL_BATCH_STATUSES, Batch, BatchStatus, batch_from_fields, item_id
from core.jobs import JobStatus

_READ = 1000


class RetryRequest(BaseModel):
    statuses: list[JobStatus] = Field(
        default=[JobStatus.failed, JobStatus.expired],
        min_length=1,
        description="The items to run again, by how they ended.",
    )


async def retry(submission: Submission, batch_id: str, statuses: list[JobStatus]) -> Batch:
    """A new batch of the batch's items in `statuses`; 409 while it runs, 422 when it has none."""
    redis = submission.redis
    batch = await batch_store.read_batch(redis, batch_id, submission.caller)
    if BatchStatus(batch["status"]) not in TERMINAL_BATCH_STATUSES:
        raise HTTPException(409, f"batch {batch_id} is still {batch['status']}; retry it once it has ended")
    running = [s.value for s in statuses if not s.is_terminal]
    if running:
        raise HTTPException(422, f"only items that ended can run again, not {', '.join(running)} ones")
    items = await _items(redis, batch, statuses)
    if not items:
        wanted = ", ".join(s.value for s in statuses)
        raise HTTPException(422, f"batch {batch_id} has no {wanted} items to run again")
    options = BatchOptions(
        model=batch.get("model") or None,
        temperature=float(batch["temperature"]) if batch.get("temperature") else None,
        stream=batch.get("stream") == "1",
        version=batch.get("pin_version") or None,
        rollout_key=batch.get("rollout_key") or None,
    )
    if submission.idempotency_key is None:
        submission.idempotency_key = f"retry:{batch_id}:{','.join(sorted(s.value for s in statuses))}"
    new = await submission.batch(batch["program"], items, options)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.batch(new.id), "retry_of", batch_id)
        pipe.hset(keys.batch(batch_id), "retried_by", new.id)
        await pipe.execute()
    return batch_from_fields(await batch_store.read_batch(redis, new.id))


async def _items(redis: Any, batch: dict[str, str], statuses: list[JobStatus]) -> list[StoredItem]:
    """Every item of `batch` in `statuses`, in order, as a batch submission stores it (input + custom_id)."""
    found: list[StoredItem] = []
    after = -1
    while indexes := await listing.batch_item_indexes(redis, batch, statuses, after, _READ):
        async with redis.pipeline(transaction=False) as pipe:
            for index in indexes:
                pipe.hmget(keys.job(item_id(batch["id"], index)), ["input", "custom_id"])
                pipe.lindex(keys.batch_inputs(batch["id"]), index)
            read = await pipe.execute()
        for (raw_input, custom_id), stored in zip(read[::2], read[1::2], strict=True):
            if raw_input is not None:
                item = cast(StoredItem, json.loads(raw_input))
                if custom_id is not None:
                    item["custom_id"] = custom_id
            else:
                item = cast(StoredItem, json.loads(stored or "{}"))
            found.append(item)
        after = indexes[-1]
    return found
