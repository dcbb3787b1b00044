"""The API's records as typed values: a job, a batch, a batch item's result, a program.

Each keeps the JSON it was read from as `raw`, so a field the server adds
later is readable before this client knows its name. Times are aware
`datetime`s in UTC.
"""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    queued = "queued"  # stored and enqueued; no worker has started it yet
    running = "running"  # a worker is executing it now
    succeeded = "succeeded"  # finished; `result` holds the program's output
    failed = "failed"  # finished; `error` says why
    cancelled = "cancelled"  # stopped at a client's request
    expired = "expired"  # not started before its deadline; never ran

    @property
    def is_terminal(self) -> bool:
        return self not in (JobStatus.queued, JobStatus.running)


class BatchStatus(StrEnum):
    queued = "queued"  # stored; no item has started yet
    running = "running"  # at least one item started
    completed = "completed"  # every item finished (succeeded or failed)
    cancelling = "cancelling"  # cancel requested; running items are finishing
    cancelled = "cancelled"  # cancelled; counts say what ran and what did not
    failed = "failed"  # the batch could not run at all; `error` says why
    expired = "expired"  # every item ended, and some were not started before the deadline

    @property
    def is_terminal(self) -> bool:
        return self not in (BatchStatus.queued, BatchStatus.running, BatchStatus.cancelling)


def _time(raw: Any) -> datetime | None:
    return datetime.fromisoformat(raw) if raw else None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "Usage | None":
        if data is None:
            return None
        return cls(
            prompt_tokens=int(data.get("prompt_tokens", 0)),
            completion_tokens=int(data.get("completion_tokens", 0)),
            total_tokens=int(data.get("total_tokens", 0)),
        )


@dataclass(frozen=True)
class JobFailure:
    """Why a job did not succeed: the record's `error`."""

    type: str  # the exception on the worker, e.g. LMTimeoutError, AdapterParseError, JobExpired
    message: str
    retryable: bool
    code: int  # HTTP-style: 422 unparseable output, 429, 504, 502, 413, 400, 408 expired, ...
    attempts: int

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "JobFailure | None":
        if data is None:
            return None
        return cls(
            type=str(data.get("type", "")),
            message=str(data.get("message", "")),
            retryable=bool(data.get("retryable", False)),
            code=int(data.get("code", 500)),
            attempts=int(data.get("attempts", 0)),
        )


@dataclass(frozen=True)
class JobRecord:
    """A job as `GET /jobs/{id}` returns it."""

    id: str
    program: str
    status: JobStatus
    input: dict[str, Any]
    result: dict[str, Any] | None
    error: JobFailure | None
    usage: Usage | None
    attempts: int
    program_version: str | None
    model: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "JobRecord":
        return cls(
            id=data["id"],
            program=data["program"],
            status=JobStatus(data["status"]),
            input=data.get("input") or {},
            result=data.get("result"),
            error=JobFailure.from_json(data.get("error")),
            usage=Usage.from_json(data.get("usage")),
            attempts=int(data.get("attempts", 0)),
            program_version=data.get("program_version"),
            model=data.get("model"),
            created_at=_time(data.get("created_at")),
            started_at=_time(data.get("started_at")),
            finished_at=_time(data.get("finished_at")),
            raw=data,
        )


@dataclass(frozen=True)
class BatchCounts:
    """Items by status; they always add up to `total`."""

    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    expired: int

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.cancelled + self.expired


@dataclass(frozen=True)
class BatchRecord:
    """A batch as `GET /batches/{id}` returns it."""

    id: str
    program: str
    status: BatchStatus
    counts: BatchCounts
    usage: Usage | None
    error: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "BatchRecord":
        counts = data["counts"]
        return cls(
            id=data["id"],
            program=data["program"],
            status=BatchStatus(data["status"]),
            counts=BatchCounts(**{name: int(counts.get(name, 0)) for name in BatchCounts.__dataclass_fields__}),
            usage=Usage.from_json(data.get("usage")),
            error=data.get("error"),
            created_at=_time(data.get("created_at")),
            started_at=_time(data.get("started_at")),
            finished_at=_time(data.get("finished_at")),
            raw=data,
        )


@dataclass(frozen=True)
class BatchItemResult:
    """One item of a batch's results, in submission order. Its job is `GET /jobs/{id}`."""

    index: int
    id: str
    custom_id: str | None
    status: JobStatus
    attempts: int
    result: dict[str, Any] | None
    error: JobFailure | None
    usage: Usage | None
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "BatchItemResult":
        return cls(
            index=int(data["index"]),
            id=data["id"],
            custom_id=data.get("custom_id"),
            status=JobStatus(data["status"]),
            attempts=int(data.get("attempts", 0)),
            result=data.get("result"),
            error=JobFailure.from_json(data.get("error")),
            usage=Usage.from_json(data.get("usage")),
            raw=data,
        )


@dataclass(frozen=True)
class ProgramInfo:
    """A served program as `GET /programs` lists it; the schemas are JSON Schema of its signature's fields."""

    name: str
    default: bool
    available: bool
    problem: str | None
    version: str | None
    input_schema: dict[str, Any] | None
    output_schema: dict[str, Any] | None
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ProgramInfo":
        return cls(
            name=data["name"],
            default=bool(data.get("default", False)),
            available=bool(data.get("available", True)),
            problem=data.get("problem"),
            version=data.get("version"),
            input_schema=data.get("input_schema"),
            output_schema=data.get("output_schema"),
            raw=data,
        )
