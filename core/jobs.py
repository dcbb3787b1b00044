"""The job record: its status, its public shape, and how it sits in Redis.

A job is one Redis hash (`keys.job`). The API writes it whole at submit time,
before the task is enqueued, so an id that was never issued is a clean 404.
The worker then updates fields in place. Structured values (input, result,
error, usage) are JSON strings inside the hash; times are unix seconds.
"""

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from core.webhooks import WebhookState, webhook_from_fields


class JobStatus(StrEnum):
    queued = "queued"  # stored and enqueued; no worker has started it yet
    running = "running"  # a worker is executing it now
    succeeded = "succeeded"  # finished; `result` holds the program's output
    failed = "failed"  # finished; `error` says why
    cancelled = "cancelled"  # stopped at a client's request; never resumes
    expired = "expired"  # not started before its deadline (`expires_at`); never ran

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled, JobStatus.expired})
# Record fields that choose the job's program version (worker/versions.py): the version it is pinned to, and
# the caller's key a canary assigns by. A batch's are its items'.
VERSION_FIELDS = ("pin_version", "rollout_key")


class JobError(BaseModel):
    type: str = Field(description="Exception class, e.g. LMTimeoutError or AdapterParseError.")
    message: str = Field(description="What went wrong, in words a person can act on.")
    retryable: bool = Field(description="Whether the failure was transient (it was retried while attempts lasted).")
    code: int = Field(
        500,
        description="HTTP-style code: 422 unparseable output, 429 rate limited, 504 timed out, 502 provider error, "
        "400 input the program cannot take, 503 program not loadable by the worker, 408 not started before its "
        "deadline, 508 dead-lettered (its worker was lost on JOB_MAX_DELIVERIES deliveries: not delivered again).",
    )
    attempts: int = Field(0, description="Attempts made before giving up.")


class LMUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class JobLinks(BaseModel):
    self: str = Field(description="Poll this URL for the job record.")
    events: str = Field(description="Server-sent events: status changes, tokens, the result.")

    @classmethod
    def for_job(cls, job_id: str) -> "JobLinks":
        return cls(self=f"/jobs/{job_id}", events=f"/jobs/{job_id}/events")


class Job(BaseModel):
    """A job as clients see it."""

    id: str
    program: str = Field(description="Name of the DSPy program that runs the job.")
    program_version: str | None = Field(
        None, description="Version of the program's artifact that served the job (set when it finishes)."
    )
    status: JobStatus
    input: dict[str, Any] = Field(description="The program's input fields, as submitted.")
    model: str | None = Field(None, description="Per-job LM override, if any.")
    temperature: float | None = Field(None, description="Per-job temperature override, if any.")
    stream: bool = Field(
        True,
        description="Whether output fields stream token by token; if not, each arrives as one whole `token` event.",
    )
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = Field(
        None, description="The job ends `expired`, never run, if no worker has started it by then."
    )
    attempts: int = Field(0, description="How many times a worker started this job.")
    deliveries_lost: int = Field(
        0,
        description="Attempts that ended without a report: the worker running it died or stalled past its lease. "
        "At JOB_MAX_DELIVERIES the job ends failed, `DeadLettered`.",
    )
    capacity_wait_s: float = Field(
        0.0, description="Seconds the job waited, taken by a worker, for the LM to have capacity for it."
    )
    worker: str | None = Field(None, description="The worker process that ran it last.")
    result: dict[str, Any] | None = Field(
        None, description="The program's output fields, typed as its signature says (`GET /programs` has the schema)."
    )
    error: JobError | None = None
    usage: LMUsage | None = Field(None, description="LM tokens spent on the job.")
    trace_id: str | None = Field(
        None, description="The MLflow trace of its last attempt, with MLFLOW_TRACING on (set when it finishes)."
    )
    webhook: WebhookState | None = Field(None, description="The delivery of its completion event, if it has one.")
    batch_id: str | None = Field(None, description="For a batch's item: its batch.")
    custom_id: str | None = Field(None, description="For a batch's item: the `custom_id` it was submitted with.")
    links: JobLinks


def now_s() -> float:
    return datetime.now(UTC).timestamp()


def new_job_fields(
    job_id: str,
    program: str,
    inputs: dict[str, Any],
    model: str | None,
    temperature: float | None,
    created_at_s: float,
    stream: bool = True,
    expires_at_s: float | None = None,
) -> dict[str, str]:
    """The hash written at submit time."""
    fields = {
        "id": job_id,
        "program": program,
        "status": JobStatus.queued.value,
        "input": json.dumps(inputs),
        "created_at": repr(created_at_s),
        "attempts": "0",
        "seq": "0",
        "stream": "1" if stream else "0",
    }
    if model is not None:
        fields["model"] = model
    if temperature is not None:
        fields["temperature"] = repr(temperature)
    if expires_at_s is not None:
        fields["expires_at"] = repr(expires_at_s)
    return fields


def deliveries_lost(fields: Mapping[str, str]) -> int:
    """Attempts of the job whose worker was lost (worker/reaper.py); records from before the count had none."""
    return int(fields.get("deliveries_lost") or 0)


def streams(fields: dict[str, str]) -> bool:
    """Whether a job streams its tokens; records from before the option existed did."""
    return fields.get("stream", "1") != "0"


def time_or_none(raw: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(raw), UTC) if raw else None


def _json(raw: str | None) -> Any:
    return json.loads(raw) if raw else None


def job_from_fields(fields: dict[str, str], links: JobLinks) -> Job:
    """Rebuild the public record from the Redis hash (decoded to str)."""
    return Job(
        id=fields["id"],
        program=fields["program"],
        program_version=fields.get("program_version"),
        status=JobStatus(fields["status"]),
        input=_json(fields.get("input")) or {},
        model=fields.get("model"),
        temperature=float(fields["temperature"]) if fields.get("temperature") else None,
        stream=streams(fields),
        created_at=datetime.fromtimestamp(float(fields["created_at"]), UTC),
        started_at=time_or_none(fields.get("started_at")),
        finished_at=time_or_none(fields.get("finished_at")),
        expires_at=time_or_none(fields.get("expires_at")),
        attempts=int(fields.get("attempts", 0)),
        deliveries_lost=deliveries_lost(fields),
        capacity_wait_s=round(float(fields.get("capacity_wait_s") or 0.0), 3),
        worker=fields.get("worker"),
        result=_json(fields.get("result")),
        error=_json(fields.get("error")),
        usage=_json(fields.get("usage")),
        trace_id=fields.get("trace_id"),
        webhook=webhook_from_fields(fields),
        batch_id=fields.get("batch"),
        custom_id=fields.get("custom_id"),
        links=links,
    )
