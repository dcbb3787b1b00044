"""Running one job: from its record in Redis to its result or error in Redis.

The task message carries only the job id; everything else (program, input,
overrides) is read from the record, the one source of truth. A record that
is already terminal is left alone, so a redelivered message never runs a
finished job again.
"""

import json
import logging
import time
from typing import Any

import dspy

from core.events import EventType
from core.jobs import JobError, JobStatus, LMUsage
from worker.job_updates import JobUpdates, dumps
from worker.runtime import Runtime
from worker.streaming import OnToken, stream_prediction

log = logging.getLogger(__name__)


def run(job_id: str, runtime: Runtime, updates: JobUpdates, fields: dict[str, str] | None, worker_name: str) -> None:
    if fields is None:
        log.warning("job %s: no record (expired or never stored); dropping the message", job_id)
        return
    if JobStatus(fields["status"]).is_terminal:
        log.info("job %s: already %s; not running it again", job_id, fields["status"])
        return

    attempts = int(fields.get("attempts", "0")) + 1
    running = {
        "status": JobStatus.running.value,
        "started_at": repr(time.time()),
        "worker": worker_name,
        "attempts": str(attempts),
    }
    # Every attempt starts with this event; a reader drops the token text of
    # any earlier attempt when it sees it (see core/events.py).
    started = {"status": JobStatus.running.value, "attempt": attempts}
    if updates.emit(job_id, EventType.status, started, running) < 0:
        log.warning("job %s: record vanished before it started", job_id)
        return
    fields = {**fields, **running}

    def on_token(field: str, text: str) -> None:
        updates.emit(job_id, EventType.token, {"field": field, "text": text})

    try:
        prediction = _predict(runtime, fields, on_token)
    except Exception as e:
        error = _job_error(e)
        log.warning("job %s failed: %s: %s", job_id, error.type, error.message)
        updates.finish(
            job_id,
            fields,
            EventType.error,
            {"status": JobStatus.failed.value, "error": error.model_dump_json(), "finished_at": repr(time.time())},
        )
        return

    updates.finish(
        job_id,
        fields,
        EventType.result,
        {
            "status": JobStatus.succeeded.value,
            "result": dumps(dict(prediction.items())),
            "usage": _usage(prediction).model_dump_json(),
            "finished_at": repr(time.time()),
        },
    )


def _predict(runtime: Runtime, fields: dict[str, str], on_token: OnToken) -> dspy.Prediction:
    program = runtime.program(fields["program"])
    temperature = float(fields["temperature"]) if fields.get("temperature") else None
    lm = runtime.lm(fields.get("model"), temperature)
    # History and trace off: a long-lived process would otherwise keep every
    # prompt and completion it ever saw.
    with dspy.context(
        lm=lm,
        adapter=runtime.adapter,
        disable_history=True,
        trace=None,
        track_usage=True,
        async_max_workers=runtime.max_concurrent_jobs,
    ):
        return stream_prediction(program, json.loads(fields["input"]), on_token)


def _usage(prediction: dspy.Prediction) -> LMUsage:
    total = LMUsage()
    per_model: dict[str, dict[str, Any]] = prediction.get_lm_usage() or {}
    for usage in per_model.values():
        total.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        total.completion_tokens += int(usage.get("completion_tokens") or 0)
        total.total_tokens += int(usage.get("total_tokens") or 0)
    return total


def _job_error(e: Exception) -> JobError:
    return JobError(type=type(e).__name__, message=str(e)[:2000] or type(e).__name__, retryable=_retryable(e))


def _retryable(e: Exception) -> bool:
    return bool(dspy.is_retryable_lm_error(e))
