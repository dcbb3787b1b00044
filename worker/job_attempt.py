"""Running an attempt of a started job: the program on the loop, its tokens, its end.

- An optimization job (a batch item carrying one) builds and registers a
  candidate version instead (worker/optimization.py).
- The job's program version is decided as the attempt starts
  (worker/versions.py: pinned, a rollout's candidate or stable, or as
  registered).
- The program runs on the process's event loop (worker/streaming.py) inside
  `dspy.context` with the job's LM (worker/lm_gate.py: its first call uses
  the slot the job waited for, every further call takes its own), history
  and trace off, usage tracked, within `job_time_limit_s`. Token events go
  out through the process's token writer.
- It ends succeeded, failed, or back to the queue for another attempt
  (worker/error_policy.py), each one fenced write. A retryable failure is
  tried again until `job_max_attempts` attempts have ended with an outcome;
  attempts whose worker died ended with none and are not among them: the
  reaper counts those (`deliveries_lost`) and ends the job at
  `job_max_deliveries` (worker/reaper.py).
- A job this worker no longer holds (its lease renewal or a token write was
  refused: cancelled, or taken over after this worker stalled) is cancelled
  on the loop at once, which closes its LM call; it writes nothing more.
"""

import asyncio
import contextvars
import functools
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dspy
import redis.asyncio as aioredis

from core.events import EventType
from core.jobs import JobStatus, LMUsage, deliveries_lost, streams
from core.refusals import Refusal
from core.settings import Settings
from worker.capacity import Capacity
from worker.error_policy import JobTimeLimitExceeded, is_retryable, job_error, retry_delay_s
from worker.isolation import Isolation
from worker.job_store import JobStore, dumps
from worker.lm_gate import CallScope, call_scope
from worker.log_context import job_log_context
from worker.metrics import record_job_outcome
from worker.optimization import Optimizations, OptimizationStopped
from worker.replay_scores import replay_scores
from worker.runs import Run, Send, waiting_event
from worker.runtime import LoadedProgram, ProgramUnavailable, Runtime
from worker.streaming import predict
from worker.token_writer import TokenWriter
from worker.tracing import JobTrace
from worker.versions import program_for

log = logging.getLogger(__name__)


class _Stopped(Exception):
    """The job is no longer this worker's to run."""


class JobAttempts:
    def __init__(
        self,
        settings: Settings,
        client: aioredis.Redis,
        runtime: Runtime,
        capacity: Capacity,
        writer: TokenWriter,
        store: JobStore,
        send: Send,
        runs: dict[str, Run],
        isolation: Isolation,
    ) -> None:
        self._settings = settings
        self._redis = client
        self._runtime = runtime
        self._capacity = capacity
        self.writer = writer
        self.store = store
        self._send = send
        self.runs = runs
        self._isolation = isolation
        # Programs without `aforward` run `forward` here, one thread per job.
        self._threads = ThreadPoolExecutor(
            max_workers=max(limits.max_in_flight for _, limits in capacity.models.values()), thread_name_prefix="job"
        )
        self._optimizations = Optimizations(settings, client, runtime, capacity, store, self._run_sync)

    def start(self, run: Run) -> None:
        """Run the attempt `run` has started, on the loop."""
        run.task = asyncio.create_task(self._run(run), name=f"job-{run.job_id}")
        # Even for a task cancelled before it began: the process's isolation must not wait for it forever.
        run.task.add_done_callback(lambda _: self._isolation.ended(run.lone))

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
        if run.fields.get("optimization"):
            return await self._optimize(run)
        name = run.fields["program"]
        try:
            program = await program_for(self._runtime, self._redis, run.job_id, run.fields)
        except ProgramUnavailable as e:
            return await self._fail(run, e)
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
            await self.store.emit(
                run.job_id,
                run.token,
                EventType.status,
                waiting_event(run, reason, paused_until, self._settings.lm_model),
            )

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
        if run.fields.get("replay"):
            # A metric is the program's own code, which may call an LM: off the loop.
            updates |= await self._run_sync(replay_scores, self._runtime.metric(name), run.fields, prediction)
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

    async def _optimize(self, run: Run) -> bool:
        """An optimization job (worker/optimization.py) in place of a program's call; True when counted."""
        limit_s = self._settings.optimization_time_limit_s
        try:
            async with asyncio.timeout(limit_s):
                result = await self._optimizations.run(run)
        except OptimizationStopped:
            raise asyncio.CancelledError from None
        except TimeoutError:
            limited = JobTimeLimitExceeded(f"the optimization ran longer than its time limit of {limit_s} s")
            return await self._fail(run, limited)
        except Exception as e:
            # Not retried: its LM calls are spent, and the same examples would fail the same way.
            return await self._fail(run, e)
        updates = {
            "status": JobStatus.succeeded.value,
            "result": result.model_dump_json(),
            "finished_at": repr(time.time()),
        }
        seq = await self.store.end(run.job_id, run.token, run.fields, EventType.result, updates)
        await self._log_refusal(run, seq, "its result is dropped")
        if seq > 0:
            log.info(
                "optimization %s of %s registered version %s (held-out score %.3f against %.3f of %s)",
                run.job_id,
                run.fields["program"],
                result.candidate_version,
                result.scores.candidate,
                result.scores.current,
                result.current_version,
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
        reported = run.attempts - deliveries_lost(run.fields)
        if is_retryable(e) and reported < self._settings.job_max_attempts:
            await self._retry(run, e)
            return False
        return await self._fail(run, e, program.version, trace.fields)

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
        program_version: str | None = None,
        trace_fields: dict[str, str] | None = None,
    ) -> bool:
        error = job_error(e, run.attempts)
        log.warning("job %s failed after %d attempt(s): %s: %s", run.job_id, run.attempts, error.type, error.message)
        updates = {
            "status": JobStatus.failed.value,
            "error": error.model_dump_json(),
            "finished_at": repr(time.time()),
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
