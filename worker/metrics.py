"""What a worker adds to the metrics when a job ends (read back by `GET /metrics`).

Called after every run of the job task. It reads the record (the one source
of truth) rather than hooking into the runner: whatever way the job ended
(succeeded, failed, cancelled while queued or while running, or a batch item
cancelled before it started), the record says so. A job is counted once:
the first worker to see it finished marks the record (`HSETNX`), so a
redelivered message or a second look never counts it again. A job still
retrying is counted when it finally ends, its extra attempts with it.

Metrics never fail a job: a Redis error here is logged and dropped.
"""

import json
import logging
from typing import cast

import redis

from core import keys
from core.jobs import JobStatus
from core.metrics import (
    HISTOGRAMS,
    JOB_RETRIES,
    JOBS_FINISHED,
    LM_TOKENS,
    QUEUE_WAIT,
    RUN_TIME,
    bucket_index,
    counter_field,
    histogram_field,
)

log = logging.getLogger(__name__)

# Set on a job record once its outcome is in the metrics.
COUNTED_FIELD = "metrics_counted"
_FIELDS = ["status", "program", "model", "created_at", "started_at", "finished_at", "attempts", "usage"]


def record_job_outcome(client: redis.Redis, job_id: str, default_model: str) -> None:
    try:
        _record(client, job_id, default_model)
    except (redis.RedisError, ValueError) as e:
        log.warning("could not record metrics for job %s: %s", job_id, e)


def _record(client: redis.Redis, job_id: str, default_model: str) -> None:
    # decode_responses=True: values are str.
    row = cast(dict[str, str | None], dict(zip(_FIELDS, client.hmget(keys.job(job_id), _FIELDS), strict=True)))
    status = row["status"]
    if status is None or not JobStatus(status).is_terminal:
        return
    if not client.hsetnx(keys.job(job_id), COUNTED_FIELD, "1"):
        return
    program = row["program"] or "unknown"
    with client.pipeline(transaction=False) as pipe:
        pipe.hincrby(keys.METRICS_COUNTERS, counter_field(JOBS_FINISHED, {"program": program, "status": status}), 1)
        retries = int(row["attempts"] or 0) - 1
        if retries > 0:
            pipe.hincrby(keys.METRICS_COUNTERS, counter_field(JOB_RETRIES, {"program": program}), retries)
        if row["usage"]:
            usage = json.loads(row["usage"])
            model = row["model"] or default_model
            for kind in ("prompt", "completion"):
                tokens = int(usage.get(f"{kind}_tokens") or 0)
                labels = {"program": program, "model": model, "kind": kind}
                pipe.hincrby(keys.METRICS_COUNTERS, counter_field(LM_TOKENS, labels), tokens)
        created, started, finished = (_time(row[f]) for f in ("created_at", "started_at", "finished_at"))
        if created is not None and started is not None:
            _observe(pipe, QUEUE_WAIT, {"program": program}, started - created)
        if started is not None and finished is not None:
            _observe(pipe, RUN_TIME, {"program": program, "status": status}, finished - started)
        pipe.execute()


def _time(raw: str | None) -> float | None:
    return float(raw) if raw else None


def _observe(pipe: "redis.client.Pipeline", name: str, labels: dict[str, str], value: float) -> None:
    value = max(value, 0.0)  # clocks of different machines: never a negative duration
    index = bucket_index(HISTOGRAMS[name].buckets, value)
    pipe.hincrby(keys.METRICS_HISTOGRAMS, histogram_field(name, labels, index), 1)
    pipe.hincrbyfloat(keys.METRICS_HISTOGRAMS, histogram_field(name, labels, "sum"), value)
