"""What a worker adds to the metrics when a job ends (read back by `GET /metrics`).

A job that a worker ends (succeeded, failed, expired, an item of a
cancelled batch) is counted by `job_end`, in the same step as its terminal
event (worker/job_store.py). Any other way a job the worker saw ended
(cancelled while queued or while running, a redelivered message) goes
through `record_job_outcome`, which reads the record (the one source of
truth). A job is counted once:
the first to see it finished marks the record (`HSETNX`), so a redelivered
message or a second look never counts it again. A job still retrying is
counted when it finally ends, its extra attempts with it.

Metrics never fail a job: a Redis error here is logged and dropped.
"""

import json
import logging
from collections.abc import Mapping
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core import keys
from core.jobs import JobStatus
from core.metrics import (
    CAPACITY_WAIT,
    HISTOGRAMS,
    JOB_RETRIES,
    JOBS_FINISHED,
    LM_TOKENS,
    QUEUE_WAIT,
    RUN_TIME,
    VERSION_JOBS,
    VERSION_PARSE_FAILURES,
    VERSION_RUN_TIME,
    VERSION_TOKENS,
    bucket_index,
    counter_field,
    histogram_field,
)

log = logging.getLogger(__name__)

_FIELDS = [
    "status",
    "program",
    "model",
    "created_at",
    "started_at",
    "finished_at",
    "attempts",
    "usage",
    "capacity_wait_s",
    "program_version",
    "error",
]


# One increment of a metrics hash: (hash key, field, amount). An int amount
# is an HINCRBY, a float one an HINCRBYFLOAT (histogram sums).
Increment = tuple[str, str, int | float]


async def record_job_outcome(client: aioredis.Redis, job_id: str, default_model: str) -> None:
    try:
        await _record(client, job_id, default_model)
    except (RedisError, ValueError) as e:
        log.warning("could not record metrics for job %s: %s", job_id, e)


async def _record(client: aioredis.Redis, job_id: str, default_model: str) -> None:
    # decode_responses=True: values are str.
    values = await client.hmget(keys.job(job_id), _FIELDS)
    row = cast(dict[str, str | None], dict(zip(_FIELDS, values, strict=True)))
    status = row["status"]
    if status is None or not JobStatus(status).is_terminal:
        return
    if not await client.hsetnx(keys.job(job_id), keys.COUNTED_FIELD, "1"):
        return
    async with client.pipeline(transaction=False) as pipe:
        for key, field, amount in outcome_increments(row, default_model):
            if isinstance(amount, float):
                pipe.hincrbyfloat(key, field, amount)
            else:
                pipe.hincrby(key, field, amount)
        await pipe.execute()


def outcome_increments(row: Mapping[str, str | None], default_model: str) -> list[Increment]:
    """What a finished job adds to the metrics, from its record's fields (`_FIELDS`).

    Also what `job_end` applies when a worker ends the job (worker/job_store.py), saving the round trips
    above.
    """
    status = str(row["status"])
    program = row.get("program") or "unknown"
    found: list[Increment] = [
        (keys.METRICS_COUNTERS, counter_field(JOBS_FINISHED, {"program": program, "status": status}), 1)
    ]
    retries = int(row.get("attempts") or 0) - 1
    if retries > 0:
        found.append((keys.METRICS_COUNTERS, counter_field(JOB_RETRIES, {"program": program}), retries))
    usage_json = row.get("usage")
    if usage_json:
        usage = json.loads(usage_json)
        model = row.get("model") or default_model
        for kind in ("prompt", "completion"):
            tokens = int(usage.get(f"{kind}_tokens") or 0)
            labels = {"program": program, "model": model, "kind": kind}
            found.append((keys.METRICS_COUNTERS, counter_field(LM_TOKENS, labels), tokens))
    created, started, finished = (_time(row.get(f)) for f in ("created_at", "started_at", "finished_at"))
    if created is not None and started is not None:
        found += _observe(QUEUE_WAIT, {"program": program}, started - created)
    if started is not None and finished is not None:
        found += _observe(RUN_TIME, {"program": program, "status": status}, finished - started)
    waited = _time(row.get("capacity_wait_s"))
    if waited:
        found += _observe(CAPACITY_WAIT, {"model": row.get("model") or default_model}, waited)
    return found + _version_increments(row, started, finished)


def _version_increments(
    row: Mapping[str, str | None], started: float | None, finished: float | None
) -> list[Increment]:
    """The version's side of a job that ran one (GET /programs/{name}/versions compares them)."""
    version, status = row.get("program_version"), str(row["status"])
    if not version or status not in (JobStatus.succeeded, JobStatus.failed):
        return []
    labels = {"program": row.get("program") or "unknown", "version": version}
    found: list[Increment] = [(keys.METRICS_COUNTERS, counter_field(VERSION_JOBS, {**labels, "status": status}), 1)]
    error = json.loads(row.get("error") or "null")
    if status == JobStatus.failed and isinstance(error, dict) and error.get("type") == "AdapterParseError":
        found.append((keys.METRICS_COUNTERS, counter_field(VERSION_PARSE_FAILURES, labels), 1))
    usage = json.loads(row.get("usage") or "null")
    if isinstance(usage, dict):
        tokens = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
        found.append((keys.METRICS_COUNTERS, counter_field(VERSION_TOKENS, labels), tokens))
    if started is not None and finished is not None:
        found += _observe(VERSION_RUN_TIME, labels, finished - started)
    return found


def _time(raw: str | None) -> float | None:
    return float(raw) if raw else None


def _observe(name: str, labels: dict[str, str], value: float) -> list[Increment]:
    value = max(value, 0.0)  # clocks of different machines: never a negative duration
    index = bucket_index(HISTOGRAMS[name].buckets, value)
    return [
        (keys.METRICS_HISTOGRAMS, histogram_field(name, labels, index), 1),
        (keys.METRICS_HISTOGRAMS, histogram_field(name, labels, "sum"), value),
    ]
