"""Batch records: many items, each an ordinary job, counted as they move.

A batch is a Redis hash (`keys.batch`) holding its status, its counters
(`n_queued`, `n_running`, `n_succeeded`, `n_failed`, `n_cancelled`), token
usage totals and a `version` bumped at every change. The counters move inside
the event script (core/events.py) at the same moment as each item's status,
so they always add up to `total` and are never computed by reading items.

Items are jobs with ids `<batch id>-<index>`; their inputs wait in a list
(`keys.batch_inputs`) until the bulk worker turns them into jobs.
"""

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from core.jobs import LMUsage, time_or_none


class BatchStatus(StrEnum):
    queued = "queued"  # stored; no item has started yet
    running = "running"  # at least one item started
    completed = "completed"  # every item finished (succeeded or failed)
    cancelling = "cancelling"  # cancel requested; running items are finishing
    cancelled = "cancelled"  # cancelled; counts say what ran and what did not
    failed = "failed"  # the batch could not run at all; `error` says why


TERMINAL_BATCH_STATUSES = frozenset({BatchStatus.completed, BatchStatus.cancelled, BatchStatus.failed})
ITEM_COUNTERS = ("queued", "running", "succeeded", "failed", "cancelled")


def item_id(batch_id: str, index: int) -> str:
    return f"{batch_id}-{index}"


class BatchCounts(BaseModel):
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int


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
    usage: LMUsage = Field(description="LM tokens spent by all items so far.")
    error: str | None = Field(None, description="Why the batch could not run, when `status` is `failed`.")
    links: BatchLinks


def new_batch_fields(
    batch_id: str,
    program: str,
    total: int,
    model: str | None,
    temperature: float | None,
    created_at_s: float,
    stream: bool = False,
) -> dict[str, str]:
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
        # Copied into every item's record (worker/batches.py).
        "stream": "1" if stream else "0",
    }
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
        usage=LMUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion),
        error=fields.get("error"),
        links=BatchLinks.for_batch(fields["id"]),
    )
