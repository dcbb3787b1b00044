"""Running one job: from its record in Redis to its result or error in Redis.

The task message carries only the job id; everything else (program, input,
overrides) is read from the record, the one source of truth. Before running,
the worker takes the job's lease (worker/leases.py): a finished job, or one
another worker is running right now, is left alone, so redelivered messages
are harmless.

Every attempt counts, including ones whose worker died; past
`job_max_attempts` the job fails instead of looping. Transient LM errors
are retried with backoff (worker/error_policy.py); the `retrying` event
says when and why. A cancelled job refuses further events, so the worker
learns of a cancellation at its next write and stops.
"""

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import dspy

from core.events import JOB_FINISHED, EventType
from core.jobs import JobStatus, LMUsage, streams
from core.settings import Settings
from worker.error_policy import JobCancelled, JobTimeLimitExceeded, WorkerLost, is_retryable, job_error, retry_delay_s
from worker.event_writer import EventWriter
from worker.job_updates import BATCH_CANCELLED, FINISHED, LEASED, NO_JOB, JobUpdates, dumps
from worker.leases import Leases
from worker.log_context import job_log_context
from worker.runtime import LoadedProgram, ProgramUnavailable, Runtime
from worker.streaming import OnToken, run_prediction

log = logging.getLogger(__name__)

Requeue = Callable[[str, float], None]


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        runtime: Runtime,
        updates: JobUpdates,
        leases: Leases,
        requeue: Requeue,
        tokens: EventWriter,
    ) -> None:
        self._settings = settings
        self._runtime = runtime
        self._updates = updates
        self._leases = leases
        self._requeue = requeue
        self._tokens = tokens

    def run(self, job_id: str, worker_name: str) -> bool:
        """Run the job if it is this worker's to run; True when its outcome is already in the metrics."""
        started = self._updates.start(job_id, worker_name, time.time())
        if started.attempts == NO_JOB:
            log.warning("job %s: no record (expired or never stored); dropping the message", job_id)
            return False
        if started.attempts == FINISHED:
            log.info("job %s: already %s; not running it again", job_id, started.status)
            return False
        if started.attempts == LEASED:
            log.info("job %s: another worker is running it; dropping this delivery", job_id)
            return False
        fields = started.fields or {}
        if started.attempts == BATCH_CANCELLED:
            # A queued item of a cancelled batch is cancelled instead of run.
            if fields.get("status") != JobStatus.queued.value:
                return False
            updates = {"status": JobStatus.cancelled.value, "finished_at": repr(time.time())}
            return self._updates.finish(job_id, fields, EventType.error, updates) > 0
        self._leases.track(job_id)
        try:
            with job_log_context(self._settings, job_id, fields):
                return self._attempt(job_id, started.attempts, fields)
        except JobCancelled:
            self._tokens.barrier(job_id)
            self._leases.release(job_id)
            log.info("job %s: cancelled while running; stopped", job_id)
            return False
        finally:
            # Released by the finish script, or explicitly above. Anything else
            # (Redis lost, a bug) leaves the lease to run out: unknown whether
            # the final write happened, so the reaper requeues the job if it is
            # still running rather than it staying `running` forever.
            self._leases.forget(job_id)

    def _attempt(self, job_id: str, attempts: int, fields: dict[str, str]) -> bool:
        if attempts > self._settings.job_max_attempts:
            lost = WorkerLost(
                f"gave up after {attempts - 1} attempts: the worker running this job stopped every time "
                "(killed, out of memory, or crashed)"
            )
            return self._fail(job_id, fields, lost, attempts - 1)
        try:
            program = self._runtime.program(fields["program"])
        except ProgramUnavailable as e:
            return self._fail(job_id, fields, e, attempts)
        stream = streams(fields)
        deadline = time.monotonic() + self._settings.job_time_limit_s
        # Not streamed: the fields, whole, written with the result in one step.
        whole: list[tuple[str, str]] = []

        def on_token(field: str, text: str) -> None:
            if not stream:
                whole.append((field, text))
                return
            if time.monotonic() > deadline:
                raise JobTimeLimitExceeded(
                    f"the job ran longer than its time limit of {self._settings.job_time_limit_s} s"
                )
            if self._tokens.refused(job_id):
                raise JobCancelled(job_id)
            self._tokens.put(job_id, EventType.token, {"field": field, "text": text})

        try:
            prediction = self._predict(program, fields, on_token, stream)
        except JobCancelled:
            raise
        except Exception as e:
            if stream:
                self._tokens.barrier(job_id)
            if is_retryable(e) and attempts < self._settings.job_max_attempts:
                self._retry(job_id, e, attempts)
                return False
            return self._fail(job_id, fields, e, attempts, program.version)
        if stream:
            # Every token is written before the result that ends the stream.
            self._tokens.barrier(job_id)
        seq = self._updates.finish(
            job_id,
            fields,
            EventType.result,
            {
                "status": JobStatus.succeeded.value,
                "result": dumps(dict(prediction.items())),
                "usage": _usage(prediction).model_dump_json(),
                "finished_at": repr(time.time()),
                # The record names the artifact version that served it.
                "program_version": program.version,
            },
            tokens=whole,
        )
        if seq == JOB_FINISHED:
            log.info("job %s: cancelled while running; its result is dropped", job_id)
        return seq > 0

    def _predict(
        self, program: LoadedProgram, fields: dict[str, str], on_token: OnToken, stream: bool
    ) -> dspy.Prediction:
        inputs = program.inputs(json.loads(fields["input"]))
        temperature = float(fields["temperature"]) if fields.get("temperature") else None
        lm = self._runtime.lm(fields.get("model"), temperature)
        # History and trace off: a long-lived process would otherwise keep every
        # prompt and completion it ever saw.
        with dspy.context(
            lm=lm,
            adapter=self._runtime.adapter,
            disable_history=True,
            trace=None,
            track_usage=True,
            async_max_workers=self._runtime.max_concurrent_jobs,
        ):
            return run_prediction(program.module, inputs, on_token, stream)

    def _retry(self, job_id: str, e: Exception, attempts: int) -> None:
        delay_s = retry_delay_s(e, attempts, self._settings.retry_base_s, self._settings.retry_max_s)
        error = job_error(e, attempts)
        log.warning("job %s attempt %d failed (%s); retrying in %.1f s", job_id, attempts, error.type, delay_s)
        retrying: dict[str, Any] = {
            "status": "retrying",
            "attempt": attempts,
            "delay_s": round(delay_s, 3),
            "error": error.model_dump(),
        }
        seq = self._updates.emit(job_id, EventType.status, retrying, {"status": JobStatus.queued.value})
        # Released before the requeue: the next attempt may start before this thread returns.
        self._leases.release(job_id)
        if seq > 0:
            self._requeue(job_id, delay_s)

    def _fail(
        self, job_id: str, fields: dict[str, str], e: Exception, attempts: int, program_version: str | None = None
    ) -> bool:
        error = job_error(e, attempts)
        log.warning("job %s failed after %d attempt(s): %s: %s", job_id, attempts, error.type, error.message)
        updates = {
            "status": JobStatus.failed.value,
            "error": error.model_dump_json(),
            "finished_at": repr(time.time()),
            "attempts": str(attempts),
        }
        if program_version is not None:
            updates["program_version"] = program_version
        seq = self._updates.finish(job_id, fields, EventType.error, updates)
        return seq > 0


def _usage(prediction: dspy.Prediction) -> LMUsage:
    total = LMUsage()
    per_model: dict[str, dict[str, Any]] = prediction.get_lm_usage() or {}
    for usage in per_model.values():
        total.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        total.completion_tokens += int(usage.get("completion_tokens") or 0)
        total.total_tokens += int(usage.get("total_tokens") or 0)
    return total
