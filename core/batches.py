"""Batch records: many items, each an ordinary job, counted as they move.

A batch is a Redis hash (`keys.batch`) holding its status, its counters
(`n_queued`, `n_running`, `n_succeeded`, `n_failed`, `n_cancelled`), token
usage totals and a `version` bumped at every change. The counters move inside
the event script (core/events.py) at the same moment as each item's status,
so they always add up to `total` and are never computed by reading items.

Items are jobs with ids `<batch id>-<index>`. Their inputs wait in a list
(`keys.batch_inputs`); a bulk worker creates an item's job record when it
picks the item to run (core/lua/batches.lua), so until then the item is its
input and a count in `n_queued`, and `item_fields` describes it.
"""

import json
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from core import keys
from core.jobs import VERSION_FIELDS, JobStatus, LMUsage, new_job_fields, time_or_none
from core.webhooks import WebhookState, webhook_from_fields


class BatchStatus(StrEnum):
    queued = "queued"  # stored; no item has started yet
    running = "running"  # at least one item started
    completed = "completed"  # every item finished (succeeded or failed)
    cancelling = "cancelling"  # cancel requested; running items are finishing
    cancelled = "cancelled"  # cancelled; counts say what ran and what did not
    failed = "failed"  # the batch could not run at all; `error` says why
    expired = "expired"  # every item ended, and some expired: not started before the batch's deadline


TERMINAL_BATCH_STATUSES = frozenset(
    {BatchStatus.completed, BatchStatus.cancelled, BatchStatus.failed, BatchStatus.expired}
)
ITEM_COUNTERS = tuple(status.value for status in JobStatus)  # every status an item can be in
# The rotation label of batches submitted without an API key (core/lua/batches.lua).
OPEN_OWNER = "-"
# Keys of a stored item that are not program input: a replay's (api/replays.py: what the worker scores the
# item's answer against, the past job's answer and its correction) and an optimization's (api/optimizations.py:
# what to build a candidate from). Each is kept on the item's record under the field named here. No input field
# can be named so: pydantic models, which every program's input is, take no field with a leading underscore.
REPLAY_KEY = "_replay"
OPTIMIZATION_KEY = "_optimization"
ITEM_EXTRAS = {REPLAY_KEY: "replay", OPTIMIZATION_KEY: "optimization"}


def item_id(batch_id: str, index: int) -> str:
    return f"{batch_id}-{index}"


class BatchCounts(BaseModel):
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    expired: int = 0


class BatchLinks(BaseModel):
    self: str
    results: str
    events: str

    @classmethod
    def for_batch(cls, batch_id: str) -> "BatchLinks":
        base = f"/batches/{batch_id}"
        return cls(self=base, results=f"{base}/results", events=f"{base}/events")


class Batch(BaseModel):
    id: str
    program: str
    status: BatchStatus
    counts: BatchCounts = Field(description="Items by status; they always add up to `total`.")
    model: str | None = None
    temperature: float | None = None
    stream: bool = Field(False, description="Whether items stream their output token by token.")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = Field(None, description="Items not started by then end `expired`.")
    usage: LMUsage = Field(description="LM tokens spent by all items so far.")
    error: str | None = Field(None, description="Why the batch could not run, when `status` is `failed`.")
    webhook: WebhookState | None = Field(None, description="The delivery of its completion event, if it has one.")
    retry_of: str | None = Field(None, description="The batch whose items this one runs again (`POST .../retry`).")
    retried_by: str | None = Field(None, description="The batch that runs this one's items again, if any.")
    links: BatchLinks


def new_batch_fields(
    batch_id: str,
    program: str,
    total: int,
    model: str | None,
    temperature: float | None,
    created_at_s: float,
    stream: bool = False,
    *,
    endpoint: str,
    owner: str | None = None,
    expires_at_s: float | None = None,
) -> dict[str, str]:
    """The batch hash, with its place in `endpoint`'s bulk rotation (core/lua/batches.lua)."""
    rotation_owner = owner or OPEN_OWNER
    fields = {
        "id": batch_id,
        "program": program,
        "status": BatchStatus.queued.value,
        "total": str(total),
        "expanded": "0",
        "created_at": repr(created_at_s),
        "version": "1",
        "n_queued": str(total),
        "prompt_tokens": "0",
        "completion_tokens": "0",
        # Copied into every item's record (`item_fields`).
        "stream": "1" if stream else "0",
        "cursor": "0",
        "inputs_key": keys.batch_inputs(batch_id),
        "retry_key": keys.batch_retries(batch_id),
        "ended_key": keys.batch_ended(batch_id),
        "rotation_owners": keys.bulk_owners(endpoint),
        "rotation_batches": keys.bulk_batches(endpoint, rotation_owner),
        "rotation_owner": rotation_owner,
        "rotation_ready": keys.bulk_ready(endpoint),
    }
    if owner is not None:
        fields["owner"] = owner
    if expires_at_s is not None:
        fields["expires_at"] = repr(expires_at_s)
    for name in ITEM_COUNTERS[1:]:
        fields[f"n_{name}"] = "0"
    if model is not None:
        fields["model"] = model
    if temperature is not None:
        fields["temperature"] = repr(temperature)
    return fields


def batch_from_fields(fields: dict[str, str]) -> Batch:
    prompt, completion = int(fields.get("prompt_tokens", 0)), int(fields.get("completion_tokens", 0))
    return Batch(
        id=fields["id"],
        program=fields["program"],
        status=BatchStatus(fields["status"]),
        counts=BatchCounts(
            total=int(fields["total"]), **{name: int(fields.get(f"n_{name}", 0)) for name in ITEM_COUNTERS}
        ),
        model=fields.get("model"),
        temperature=float(fields["temperature"]) if fields.get("temperature") else None,
        stream=fields.get("stream") == "1",
        created_at=datetime.fromtimestamp(float(fields["created_at"]), UTC),
        started_at=time_or_none(fields.get("started_at")),
        finished_at=time_or_none(fields.get("finished_at")),
        expires_at=time_or_none(fields.get("expires_at")),
        usage=LMUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion),
        error=fields.get("error"),
        webhook=webhook_from_fields(fields),
        retry_of=fields.get("retry_of"),
        retried_by=fields.get("retried_by"),
        links=BatchLinks.for_batch(fields["id"]),
    )


def item_fields(batch_id: str, index: int, raw_input: str, batch: dict[str, str]) -> dict[str, str]:
    """An item's job record, made from its stored input (the program's input fields plus `custom_id`, and
    `ITEM_EXTRAS`) and its batch: what a bulk worker writes when it picks the item, and what the API
    shows before that."""
    item = json.loads(raw_input)
    custom_id = item.pop("custom_id", None)
    extras = {field: item.pop(key) for key, field in ITEM_EXTRAS.items() if key in item}
    temperature = float(batch["temperature"]) if batch.get("temperature") else None
    expires_at = float(batch["expires_at"]) if batch.get("expires_at") else None
    fields = new_job_fields(
        item_id(batch_id, index),
        batch["program"],
        item,
        batch.get("model") or None,
        temperature,
        float(batch["created_at"]),
        batch.get("stream") == "1",
        expires_at,
    )
    fields |= {"batch": batch_id, "batch_key": keys.batch(batch_id), "index": str(index)}
    fields |= {name: batch[name] for name in VERSION_FIELDS if batch.get(name)}
    if custom_id is not None:
        fields["custom_id"] = custom_id
    fields |= {field: json.dumps(value, separators=(",", ":")) for field, value in extras.items()}
    return fields


def unpicked_status(batch: dict[str, str], index: int) -> JobStatus:
    """The status of an item no worker has picked: queued, or how its batch ended it."""
    settled_from = batch.get("settled_from")
    if settled_from is not None and index >= int(settled_from):
        return JobStatus(batch["settled_as"])
    return JobStatus.queued
