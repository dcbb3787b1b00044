"""A worker process's event loop and everything that runs on it.

One loop per process, on a thread of its own, runs every job of the process
(worker/job_runner.py) and what keeps them honest: the lease renewal, the
reaper (worker/reaper.py), the webhook sender (worker/webhooks.py), the
automatic rollback rule (worker/rollout_guard.py), feedback logged on MLflow
traces (worker/assessments.py), the heartbeat, the token writer, the bulk loops
of a bulk worker (worker/bulk.py) and the wake-ups from Redis. Celery's
threads only hand interactive jobs over (`take`) and wait until each has
started, so the number of jobs a process runs is bounded by the LM's limits,
not by its threads.

Everything is created here, in the process that runs the jobs, once per
process: never in a parent that later forks (an LM that already talked to
the provider shares pooled sockets with its children) and never with
`dspy.configure` (jobs get their LM through `dspy.context`).

Stopping (SIGTERM, Celery's warm shutdown): no new job is taken (a message
that still arrives is sent back to the queue), claimed jobs that have not
started are given back, and running jobs are waited for, up to
`job_time_limit_s`. A second signal stops at once; leases then hand the
running jobs to another worker.
"""

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from celery import Celery
from redis.exceptions import RedisError

from core import scripts
from core.queue import RUN_JOB_TASK
from core.redis_clients import async_client, sync_client
from core.refusals import Refusal
from core.settings import Settings
from worker import bulk, capacity
from worker.assessments import Assessments
from worker.bulk import BulkLoop
from worker.capacity import Capacity
from worker.heartbeat import Heartbeat
from worker.job_runner import JobRunner
from worker.job_store import JobStore
from worker.lm_gate import GatedLM
from worker.reaper import Reaper
from worker.rollout_guard import RolloutGuard
from worker.runtime import Runtime
from worker.supervisor import Liveness
from worker.token_writer import TokenWriter
from worker.wakeups import Wakeups
from worker.webhooks import run_sender, sender_liveness

log = logging.getLogger(__name__)
T = TypeVar("T")


class Engine:
    def __init__(self, settings: Settings, app: Celery) -> None:
        self._settings = settings
        self._app = app
        self._pid = os.getpid()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="job-loop", daemon=True)
        self._tasks: list[asyncio.Task[None]] = []
        self._bulk: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        # Program loads are counted with a plain client: they happen in a thread, off the loop.
        self.runtime = Runtime(
            settings,
            sync_client(settings),
            lm_class=GatedLM,
            prepare_lm=self._gate,
        )
        self.runner: JobRunner | None = None
        self._capacity: Capacity | None = None
        self._heartbeat: Heartbeat | None = None

    def _gate(self, lm: Any) -> Any:
        assert self._capacity is not None
        return lm.gate(self._capacity, self._loop)

    def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if os.getpid() != self._pid:
            raise RuntimeError("the worker's engine was used across a fork; create it in the process that runs jobs")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    # ---- called from Celery's threads --------------------------------------------------

    def start(self, hostname: str, queues: list[str]) -> None:
        self._thread.start()
        self._on_loop(self._start(hostname, queues))

    def take(self, job_id: str, model: str | None) -> None:
        """An interactive job's message: returns once the job has started (or is not this worker's)."""
        assert self.runner is not None
        self._on_loop(self.runner.take(job_id, model))

    def stop_taking(self) -> None:
        """From Celery's signal handler: take nothing more, give back what waits (it must not block)."""
        self._loop.call_soon_threadsafe(self._stop_taking)

    def drain(self) -> None:
        """Wait for the running jobs (up to `job_time_limit_s`), then close."""
        if self._thread.is_alive():
            self._on_loop(self._drain())

    # ---- on the loop ---------------------------------------------------------------

    async def _start(self, hostname: str, queues: list[str]) -> None:
        s = self._settings
        client = async_client(s, max_connections=128, retry_s=s.worker_redis_retry_s)
        await scripts.aload(client)
        wakeups = Wakeups(client, [*capacity.wakeup_channels(s), *bulk.wakeup_channels(s)])
        self._capacity = Capacity(client, s, wakeups)
        wakeups.start()
        worker = f"{hostname}:{os.getpid()}"
        writer = TokenWriter(client, s, self._loop, self._refused)
        runner = JobRunner(s, client, self.runtime, self._capacity, writer, self._send, worker)
        self.runner = runner
        runner.writer.start()
        await asyncio.to_thread(self.runtime.warm)
        runtime = self.runtime
        # Without WEBHOOK_SECRET the API refuses webhook_url: nothing is queued, no sender runs.
        webhooks = Liveness() if s.webhook_secret is not None else None

        def live_info() -> dict[str, str]:
            # Each beat also picks up new artifact versions, so a worker with no jobs
            # still switches, and reports the version it serves.
            runtime.refresh()
            info = {
                "programs": runtime.versions_json(),
                "problems": json.dumps(runtime.problems()),
                "versions": runtime.loaded_json(),
            }
            return {**info, **sender_liveness(webhooks)}

        info = {"queues": ",".join(sorted(queues)), "pool": "threads"}
        self._heartbeat = Heartbeat(client, s, hostname, info, live_info=live_info)
        await self._heartbeat.beat()
        reaper = Reaper(client, s, JobStore(client, s), self._send)
        guard = RolloutGuard(client, s, self.runtime.program_names, worker)
        for coroutine, name in (
            (self._renew_forever(), "lease-renewal"),
            (reaper.run_forever(), "reaper"),
            (self._heartbeat.run_forever(), "heartbeat"),
            (guard.run_forever(), "rollout-guard"),
        ):
            self._tasks.append(asyncio.create_task(coroutine, name=name))
        if webhooks is not None:
            self._tasks.append(asyncio.create_task(run_sender(client, s, webhooks), name="webhooks"))
        if self.runtime.has_mlflow_programs or self.runtime.tracing.enabled:
            self._tasks.append(asyncio.create_task(self._refresh_mlflow_forever(), name="mlflow-refresh"))
        if self.runtime.tracing.enabled:
            assessments = Assessments(client, self.runtime.tracing)
            self._tasks.append(asyncio.create_task(assessments.run_forever(), name="mlflow-assessments"))
        if s.bulk_queue in queues:
            for model in s.allowed_models:
                loop = BulkLoop(s, client, self._capacity, runner, wakeups, model)
                self._bulk.append(asyncio.create_task(loop.run(), name=f"bulk-{model}"))

    async def _send(self, job_id: str, model: str | None, delay_s: float) -> None:
        """Send a job's task (again) to the interactive queue."""
        await asyncio.to_thread(
            self._app.send_task,
            RUN_JOB_TASK,
            args=[job_id, model or ""],
            task_id=job_id,
            countdown=delay_s or None,
            queue=self._settings.interactive_queue,
        )

    def _refused(self, job_id: str, code: int) -> None:
        """The token writer was refused a job's event: it ended, or is another worker's now."""
        runner = self.runner
        assert runner is not None
        if code == Refusal.FENCED:
            runner.stop_job(job_id, "fenced")
            return

        async def stop() -> None:
            runner.stop_job(job_id, await runner.store.why_lost(job_id))

        task = asyncio.create_task(stop())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh_mlflow_forever(self) -> None:
        """Moved aliases, programs to retry and tracing not started yet, off the heartbeat: a tracking server
        that does not answer holds up this loop for MLFLOW_TIMEOUT_S, never a heartbeat or a job."""
        while True:
            await asyncio.sleep(self._settings.mlflow_refresh_s)
            try:
                await asyncio.to_thread(self.runtime.refresh_mlflow)
                await asyncio.to_thread(self.runtime.tracing.start)
            except Exception:
                log.exception("refreshing the MLflow programs failed; trying again later")

    async def _renew_forever(self) -> None:
        assert self.runner is not None and self._capacity is not None
        store = self.runner.store
        while True:
            await asyncio.sleep(self._settings.job_lease_s / 3)
            try:
                for job_id in await store.renew(self.runner.leases()):
                    self.runner.stop_job(job_id, await store.why_lost(job_id))
                await self._capacity.renew()
            except RedisError as e:
                log.warning("could not renew leases: %s", e)

    def _stop_taking(self) -> None:
        if self.runner is None:
            return
        self.runner.stopping = True
        for task in self._bulk:
            task.cancel()
        for run in list(self.runner.runs.values()):
            if run.attempts == 0 and run.task is not None and run.stop is None:
                run.stop = "shutdown"
                run.task.cancel()

    async def _drain(self) -> None:
        self._stop_taking()
        runner = self.runner
        if runner is not None:
            running = [run.task for run in runner.runs.values() if run.task is not None]
            if running:
                log.info("waiting for %d running job(s) to finish before stopping", len(running))
                await asyncio.wait(running, timeout=self._settings.job_time_limit_s)
            for run in list(runner.runs.values()):
                if run.task is not None:
                    run.stop = "shutdown"
                    run.task.cancel()
            await runner.close()
        if self._heartbeat is not None:
            await self._heartbeat.remove()
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, *self._bulk, return_exceptions=True)
        log.info("engine stopped; Celery finishes its own shutdown")
