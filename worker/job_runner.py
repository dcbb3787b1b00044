"""One job's life in a worker: taken, waiting for LM capacity, started, run, ended.

- **Taken.** An interactive job's message reaches a Celery thread, which
  hands the job to the process's event loop (`take`) and waits only until
  it has started: running jobs hold no thread, so a process runs as many as
  the LM's limits allow. A batch item is picked by the bulk loop
  (worker/bulk.py) only once it has a slot.
- **Waiting for capacity.** A job first gets a slot of its model's endpoint
  for its first LM call (worker/capacity.py). If none is free it is claimed
  (leased to this worker, still `queued`, with a `waiting` event saying
  why) and waits, with no LM timeout and no attempt spent, until its slot
  comes or its deadline (`expires_at`) passes: then it ends `expired`.
- **Started.** Starting counts the attempt and writes the `running` event
  (worker/job_store.py); the job's first call uses the slot it waited for.
- **Run.** The program runs on the loop (worker/streaming.py) inside
  `dspy.context` with the job's LM (worker/lm_gate.py: every further call
  takes a slot of its own), history and trace off, usage tracked, within
  `job_time_limit_s`. Token events are written by the process's token writer.
- **Ended.** Succeeded, failed, or back to the queue for another attempt
  (worker/error_policy.py), each one fenced write. Every attempt counts,
  including ones whose worker died; past `job_max_attempts` the job fails.
- **Stopped.** A job this worker no longer holds (the lease renewal or a
  token write was refused: it was cancelled, or another worker took it over
  after this one stalled) is cancelled on the loop at once, which closes its
  LM call; it writes nothing more.

Every job holds a lease with a token, renewed by the engine every
`job_lease_s / 3` (worker/engine.py); the reaper of any worker gives a job
whose lease ran out to another worker (worker/reaper.py).
"""

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import dspy
import redis.asyncio as aioredis

from core import keys
from core.events import EventType
from core.jobs import JobError, JobStatus, LMUsage, streams
from core.refusals import Refusal
from core.settings import Settings
from worker.capacity import Capacity, CapacityTimeout, Slot
from worker.error_policy import JobTimeLimitExceeded, WorkerLost, is_retryable, job_error, retry_delay_s
from worker.job_store import JobStore, Taken, dumps
from worker.lm_gate import CallScope, call_scope
from worker.log_context import job_log_context
from worker.metrics import record_job_outcome
from worker.runtime import LoadedProgram, ProgramUnavailable, Runtime
from worker.streaming import predict
from worker.token_writer import TokenWriter
from worker.tracing import JobTrace

log = logging.getLogger(__name__)

# Sends a job's task again: (job id, model, delay_s).
Send = Callable[[str, str | None, float], Awaitable[None]]

# What a job's first LM call is charged before its prompt is known, beyond its input and token limit.
_PROMPT_TOKENS_GUESS = 512


class _Stopped(Exception):
    """The job is no longer this worker's to run."""


class _Refused(Exception):
    def __init__(self, taken: Taken) -> None:
        super().__init__(taken.code)
        self.taken = taken


@dataclass
class Run:
    """A job this process holds: claimed and waiting for capacity, or running an attempt."""

    job_id: str
    token: str
    priority: str
    model: str | None
    fields: dict[str, str] = field(default_factory=dict)
    leased: bool = False
    attempts: int = 0
    # The slot granted before it started, until its first LM call takes it.
    slot: Slot | None = None
    task: "asyncio.Task[Any] | None" = None
    # Why it was stopped from outside: cancelled, fenced, shutdown.
    stop: str | None = None
    streamed: int = 0
    # time.monotonic() past which it may wait no more.
    deadline: float | None = None


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        client: aioredis.Redis,
        runtime: Runtime,
        capacity: Capacity,
        writer: TokenWriter,
        send: Send,
        worker: str,
    ) -> None:
        self._settings = settings
        self._redis = client
        self._runtime = runtime
        self.store = JobStore(client, settings)
        self._capacity = capacity
        self.writer = writer
        self._send = send
        self.worker = worker
        self.runs: dict[str, Run] = {}
        self.stopping = False
        # Programs without `aforward` run `forward` here, one thread per job.
        self._threads = ThreadPoolExecutor(
            max_workers=max(limits.max_in_flight for _, limits in capacity.models.values()), thread_name_prefix="job"
        )

    # ---- taking -------------------------------------------------------------------

    def first_call_estimate(self, fields: dict[str, str] | None = None) -> int:
        """Tokens a job's first call is charged when it is granted, before its prompt exists."""
        input_chars = len(fields.get("input", "")) if fields else 0
        return input_chars // 4 + _PROMPT_TOKENS_GUESS + self._settings.lm_max_tokens

    async def take(self, job_id: str, model: str | None) -> None:
        """An interactive job from its queue; returns once it has started or turned out not to be ours."""
        if self.stopping:
            await self._send(job_id, model, 0.0)
            return
        run = Run(job_id, uuid.uuid4().hex, "interactive", model or None)
        if run.model is not None and run.model not in self._capacity.models:
            await self._refuse_model(run)
            return
        run.task = asyncio.current_task()
        self.runs[run.token] = run

        async def claim(reason: str, paused_until: float | None) -> None:
            taken = await self.store.claim(job_id, run.token, self.worker, self._waiting(run, reason, paused_until))
            if taken.code < 0:
                raise _Refused(taken)
            run.leased, run.fields = True, taken.fields
            if taken.fields.get("expires_at"):
                run.deadline = time.monotonic() + float(taken.fields["expires_at"]) - time.time()
            log.info("job %s waits for LM capacity (%s)", job_id, reason)

        try:
            slot = await self._capacity.acquire(
                run.model,
                run.priority,
                self.first_call_estimate(),
                holder=run.token,
                deadline=lambda: run.deadline,
                on_wait=claim,
            )
        except _Refused as refused:
            self.runs.pop(run.token, None)
            await self._refused(run, refused.taken)
            return
        except CapacityTimeout:
            self.runs.pop(run.token, None)
            await self._expire(run, run.fields)
            return
        except asyncio.CancelledError:
            self.runs.pop(run.token, None)
            await self._let_go(run)
            return
        await self._start(run, slot, self.store.start(job_id, run.token, self.worker))

    async def start_item(self, item_id: str, fields: dict[str, str], retries: str, slot: Slot) -> None:
        """A batch item picked by the bulk loop with `slot`: started, and run."""
        run = Run(item_id, uuid.uuid4().hex, "bulk", fields.get("model") or None)
        self.runs[run.token] = run
        await self._start(run, slot, self.store.start_item(item_id, run.token, self.worker, fields, retries))

    async def _start(self, run: Run, slot: Slot, starting: Awaitable[Taken]) -> None:
        try:
            taken = await starting
        except BaseException:
            self.runs.pop(run.token, None)
            await asyncio.shield(self._capacity.release(slot, "unused"))
            raise
        if taken.code <= 0:
            self.runs.pop(run.token, None)
            await self._capacity.release(slot, "unused")
            await self._refused(run, taken)
            return
        run.leased, run.fields, run.attempts, run.slot = True, taken.fields, taken.code, slot
        run.task = asyncio.create_task(self._run(run), name=f"job-{run.job_id}")

    async def _refuse_model(self, run: Run) -> None:
        """A job whose model this deployment no longer allows (LM_ALLOWED_MODELS changed since it was accepted)."""
        fields = cast(dict[str, str], await self._redis.hgetall(keys.job(run.job_id)))
        if not fields:
            return
        error = JobError(
            type="ModelNotAllowed",
            message=f"model {run.model!r} is not allowed here any more (LM_MODEL, LM_ALLOWED_MODELS)",
            retryable=False,
            code=400,
        )
        updates = {"status": JobStatus.failed.value, "error": error.model_dump_json(), "finished_at": repr(time.time())}
        if await self.store.end(run.job_id, "", fields, EventType.error, updates, unstarted=True) > 0:
            log.warning("job %s failed: %s", run.job_id, error.message)

    def _waiting(self, run: Run, reason: str, paused_until: float | None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": "waiting",
            "reason": reason,
            "model": run.model or self._settings.lm_model,
        }
        if paused_until is not None:
            data["until"] = round(paused_until, 3)
        return data

    async def _refused(self, run: Run, taken: Taken) -> None:
        job_id = run.job_id
        if taken.code == Refusal.NO_JOB:
            log.warning("job %s: no record (expired or never stored); dropping the message", job_id)
        elif taken.code == Refusal.FINISHED:
            log.info("job %s: already %s; not running it again", job_id, taken.status)
            await record_job_outcome(self._redis, job_id, self._settings.lm_model)
        elif taken.code == Refusal.LEASED:
            log.info("job %s: another worker holds it; dropping this delivery", job_id)
        elif taken.code == Refusal.BATCH_CANCELLED:
            updates = {"status": JobStatus.cancelled.value, "finished_at": repr(time.time())}
            await self.store.end(job_id, run.token if run.leased else "", taken.fields, EventType.error, updates)
        elif taken.code == Refusal.EXPIRED:
            await self._expire(run, taken.fields)

    async def _expire(self, run: Run, fields: dict[str, str]) -> None:
        if await self.store.expire(run.job_id, run.token if run.leased else "", fields) > 0:
            log.info("job %s expired before it started", run.job_id)

    async def _let_go(self, run: Run) -> None:
        """A claimed job this worker stops waiting for: given back if it still holds it."""
        if run.stop == "shutdown" and run.leased:
            with contextlib.suppress(Exception):
                if await asyncio.shield(self.store.unclaim(run.job_id, run.token)) == 1:
                    await self._send(run.job_id, run.model, 0.0)
            log.info("job %s: given back unstarted (this worker is stopping)", run.job_id)
        elif run.stop is not None:
            log.info("job %s: stopped waiting (%s)", run.job_id, run.stop)
            await asyncio.shield(record_job_outcome(self._redis, run.job_id, self._settings.lm_model))

    # ---- stopping from outside ----------------------------------------------------------

    def stop_job(self, job_id: str, reason: str) -> None:
        """Cancel whatever this process does for the job (it was cancelled, or is another worker's now)."""
        for run in list(self.runs.values()):
            if run.job_id == job_id and run.task is not None and run.stop is None:
                run.stop = reason
                run.task.cancel()

    def leases(self) -> dict[str, str]:
        return {run.job_id: run.token for run in self.runs.values() if run.leased}

    # ---- running --------------------------------------------------------------------

    async def _run(self, run: Run) -> None:
        counted = False
        try:
            with job_log_context(self._settings, run.job_id, run.fields):
                counted = await self._attempt(run)
        except asyncio.CancelledError:
            if run.stop == "fenced":
                log.warning(
                    "job %s: fenced: another worker took it over (this one stalled past its lease); this attempt "
                    "stopped and wrote nothing more",
                    run.job_id,
                )
            elif run.stop == "cancelled":
                log.info("job %s: cancelled while running; stopped", run.job_id)
            else:
                log.warning("job %s: stopped (%s); its lease runs out and it runs again", run.job_id, run.stop)
        except Exception:
            log.exception(
                "job %s: the worker failed while running it; its lease runs out and it runs again", run.job_id
            )
        finally:
            self.runs.pop(run.token, None)
            self.writer.forget(run.job_id)
            if run.slot is not None:
                await asyncio.shield(self._capacity.release(run.slot, "unused"))
            if not counted and run.stop != "fenced":
                await asyncio.shield(record_job_outcome(self._redis, run.job_id, self._settings.lm_model))

    async def _attempt(self, run: Run) -> bool:
        """The attempt; True when its outcome is already in the metrics."""
        s = self._settings
        if run.attempts > s.job_max_attempts:
            lost = WorkerLost(
                f"gave up after {run.attempts - 1} attempts: the worker running this job stopped every time "
                "(killed, out of memory, or crashed)"
            )
            return await self._fail(run, lost, run.attempts - 1)
        try:
            # A load (a new artifact version) reads and builds in a thread, off the loop every job runs on.
            name = run.fields["program"]
            program = self._runtime.current(name)
            if program is None:
                program = await asyncio.to_thread(self._runtime.program, name)
        except ProgramUnavailable as e:
            return await self._fail(run, e, run.attempts)
        stream = streams(run.fields)
        deadline = time.monotonic() + s.job_time_limit_s
        whole: list[tuple[str, str]] = []

        def on_token(field_name: str, text: str) -> None:
            if not stream:
                whole.append((field_name, text))
                return
            if run.stop is not None:
                raise _Stopped(run.stop)
            run.streamed += 1
            self.writer.put(run.job_id, run.token, field_name, text)

        async def on_wait(reason: str, paused_until: float | None) -> None:
            await self.store.emit(run.job_id, run.token, EventType.status, self._waiting(run, reason, paused_until))

        scope = CallScope(run.priority, run.slot, deadline, on_wait, lambda: run.streamed)
        run.slot = None
        call_scope.set(scope)
        limit = asyncio.timeout(s.job_time_limit_s)
        trace = self._runtime.tracing.job(run.job_id, name, program.version)
        try:
            async with limit:
                with trace:
                    prediction = await self._predict(run, program, on_token, stream, trace)
        except TimeoutError as e:
            error: Exception = e
            if limit.expired():
                error = JobTimeLimitExceeded(f"the job ran longer than its time limit of {s.job_time_limit_s} s")
            return await self._failed_attempt(run, error, stream, program, trace)
        except _Stopped:
            raise asyncio.CancelledError from None
        except Exception as e:
            return await self._failed_attempt(run, e, stream, program, trace)
        finally:
            if scope.reserved is not None:
                await asyncio.shield(self._capacity.release(scope.reserved, "unused"))
        if stream:
            # Every token is written before the result that ends the stream.
            await self.writer.barrier(run.job_id)
        updates = {
            "status": JobStatus.succeeded.value,
            "result": dumps(dict(prediction.items())),
            "usage": _usage(prediction).model_dump_json(),
            "finished_at": repr(time.time()),
            # The record names the artifact version that served it.
            "program_version": program.version,
            **trace.fields,
        }
        seq = await self.store.end(run.job_id, run.token, run.fields, EventType.result, updates, tokens=whole)
        await self._log_refusal(run, seq, "its result is dropped")
        if seq > 0:
            log.info(
                "job %s succeeded (attempt %d, %.2f s running, %.2f s waiting for LM capacity)",
                run.job_id,
                run.attempts,
                time.time() - float(run.fields["started_at"]),
                float(run.fields.get("capacity_wait_s") or 0),
            )
        return seq > 0

    async def _predict(
        self, run: Run, program: LoadedProgram, on_token: Callable[[str, str], None], stream: bool, trace: JobTrace
    ) -> dspy.Prediction:
        inputs = program.inputs(json.loads(run.fields["input"]))
        temperature = float(run.fields["temperature"]) if run.fields.get("temperature") else None
        model = run.fields.get("model")
        lm, adapter = self._runtime.lm(model, temperature), self._runtime.adapter(model)
        # History and DSPy's trace off: a long-lived process would otherwise keep every
        # prompt and completion it ever saw. MLflow's trace, when on, comes through callbacks.
        callbacks = {"callbacks": trace.callbacks} if trace.callbacks else {}
        with dspy.context(lm=lm, adapter=adapter, disable_history=True, trace=None, track_usage=True, **callbacks):
            prediction = await predict(program.module, inputs, on_token, stream, self._run_sync)
        trace.set_io(run.fields["input"], prediction)
        return prediction

    async def _run_sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A blocking call (a program's `forward`) in a thread of its own, in this job's context."""
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._threads, call)

    async def _failed_attempt(
        self, run: Run, e: Exception, stream: bool, program: LoadedProgram, trace: JobTrace
    ) -> bool:
        if stream:
            await self.writer.barrier(run.job_id)
        if is_retryable(e) and run.attempts < self._settings.job_max_attempts:
            await self._retry(run, e)
            return False
        return await self._fail(run, e, run.attempts, program.version, trace.fields)

    async def _retry(self, run: Run, e: Exception) -> None:
        s = self._settings
        delay_s = retry_delay_s(e, run.attempts, s.retry_base_s, s.retry_max_s)
        error = job_error(e, run.attempts)
        log.warning("job %s attempt %d failed (%s); retrying in %.1f s", run.job_id, run.attempts, error.type, delay_s)
        retrying = {
            "status": "retrying",
            "attempt": run.attempts,
            "delay_s": round(delay_s, 3),
            "error": error.model_dump(),
        }
        code = await self.store.retry(run.job_id, run.token, time.time() + delay_s, retrying)
        if code == 1:
            await self._send(run.job_id, run.model, delay_s)
        await self._log_refusal(run, code, "no retry")

    async def _fail(
        self,
        run: Run,
        e: Exception,
        attempts: int,
        program_version: str | None = None,
        trace_fields: dict[str, str] | None = None,
    ) -> bool:
        error = job_error(e, attempts)
        log.warning("job %s failed after %d attempt(s): %s: %s", run.job_id, attempts, error.type, error.message)
        updates = {
            "status": JobStatus.failed.value,
            "error": error.model_dump_json(),
            "finished_at": repr(time.time()),
            "attempts": str(attempts),
        }
        if program_version is not None:
            updates["program_version"] = program_version
        updates.update(trace_fields or {})
        seq = await self.store.end(run.job_id, run.token, run.fields, EventType.error, updates)
        await self._log_refusal(run, seq, "its failure is dropped")
        return seq > 0

    async def _log_refusal(self, run: Run, code: int, dropped: str) -> None:
        if code not in (Refusal.FINISHED, Refusal.FENCED):
            return
        why = "fenced" if code == Refusal.FENCED else await self.store.why_lost(run.job_id)
        if why == "fenced":
            run.stop = "fenced"
            log.warning("job %s: fenced: another worker took it over; %s", run.job_id, dropped)
        else:
            log.info("job %s: cancelled while running; %s", run.job_id, dropped)

    async def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


def _usage(prediction: dspy.Prediction) -> LMUsage:
    total = LMUsage()
    per_model: dict[str, dict[str, Any]] = prediction.get_lm_usage() or {}
    for usage in per_model.values():
        total.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        total.completion_tokens += int(usage.get("completion_tokens") or 0)
        total.total_tokens += int(usage.get("total_tokens") or 0)
    return total
