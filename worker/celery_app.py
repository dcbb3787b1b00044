"""The Celery worker: `celery -A worker.celery_app worker -P threads -c 64 -Q interactive`.

Pool: `threads`. A job spends nearly all its time waiting for the LM, so one
process with many threads keeps many LM calls in flight while loading the
program and the LM once; a prefork pool of 2 on a 2-core machine would run 2
jobs at a time and hold two copies of everything. Prefork still works (each
child loads once in `worker_process_init`) for CPU-heavy programs.
"""

import functools
import json
import logging
import os
import threading
import time

import redis
from celery import Task, signals
from celery.concurrency.prefork import TaskPool as PreforkPool

from core import keys
from core.events import EventType
from core.gc_tuning import tune_gc
from core.jobs import JobStatus
from core.logging_setup import configure_logging, log_context
from core.queue import EXPAND_BATCH_TASK, RUN_JOB_TASK, make_celery
from core.settings import get_settings
from worker.batches import BatchExpander
from worker.dspy_speedups import install as install_dspy_speedups
from worker.event_writer import EventWriter
from worker.execution import JobRunner
from worker.heartbeat import Heartbeat
from worker.job_updates import JobUpdates
from worker.leases import Leases, Reaper
from worker.metrics import record_job_outcome
from worker.runtime import Runtime
from worker.streaming import raise_lm_connection_cap
from worker.task_events import install as publish_task_events_from_a_thread

log = logging.getLogger(__name__)
install_dspy_speedups()
publish_task_events_from_a_thread()

settings = get_settings()
raise_lm_connection_cap(settings.worker_concurrency)
app = make_celery(settings)

_process_lock = threading.Lock()
_process: "_ProcessState | None" = None
_heartbeat: Heartbeat | None = None


def queue_of(client: redis.Redis, job_id: str) -> str:
    """The queue a job runs from: a batch item's is the bulk queue."""
    return settings.bulk_queue if client.hexists(keys.job(job_id), "batch") else settings.interactive_queue


def send(job_id: str, queue: str, delay_s: float = 0.0) -> None:
    app.send_task(RUN_JOB_TASK, args=[job_id], task_id=job_id, countdown=delay_s or None, queue=queue)


def requeue(client: redis.Redis, job_id: str, delay_s: float = 0.0) -> None:
    """Send the job's task again, noted as queued from when it is due (worker/leases.py)."""
    queue = queue_of(client, job_id)
    client.zadd(keys.queued(queue), {job_id: time.time() + delay_s})
    send(job_id, queue, delay_s)


class _ProcessState:
    """Per-process clients, created in the process that runs jobs (after fork)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        # Blocking pool sized for every job thread: redis-py's default pool
        # (100 connections, non-blocking) raised MaxConnectionsError past 100
        # threads and lost jobs (bench/finish_burst.py).
        pool = redis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.worker_concurrency + 16,
            timeout=10,
            decode_responses=True,
            socket_connect_timeout=5,
            socket_timeout=30,
        )
        self.redis = redis.Redis(connection_pool=pool)
        self.runtime = Runtime(settings, self.redis)
        self.updates = JobUpdates(self.redis, settings)
        self.runner = JobRunner(
            settings,
            self.runtime,
            self.updates,
            Leases(self.redis, settings),
            functools.partial(requeue, self.redis),
            EventWriter(self.redis, settings),
        )

    def warm(self) -> None:
        """Load every program and the LM client now, not on the first job."""
        self.runtime.refresh()
        self.runtime.lm()
        if settings.effective_lm_engine == "litellm":
            import litellm  # noqa: F401  (seconds of import; pay them before the first job)
        tune_gc()


def process_state() -> _ProcessState:
    global _process
    with _process_lock:
        if _process is None or _process.pid != os.getpid():
            _process = _ProcessState()
        return _process


@app.task(name=RUN_JOB_TASK, bind=True)
def run_job(self: Task, job_id: str) -> None:
    state = process_state()
    counted = False
    with log_context(job_id=job_id):
        try:
            counted = state.runner.run(job_id, f"{self.request.hostname}:{os.getpid()}")
        finally:
            if not counted:
                # Read from the record, whatever other way this run ended (worker/metrics.py).
                record_job_outcome(state.redis, job_id, settings.lm_model)


@app.task(name=EXPAND_BATCH_TASK)
def expand_batch(batch_id: str) -> None:
    with log_context(batch_id=batch_id):
        BatchExpander(process_state().redis, settings, app).expand(batch_id)


@signals.setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: object) -> None:
    # Connected, so Celery leaves logging to us: one format (LOG_FORMAT), job ids, secrets masked.
    configure_logging(settings, level=loglevel or None)


@signals.worker_process_init.connect
def _init_prefork_child(**_: object) -> None:
    process_state().warm()


@signals.worker_ready.connect
def _on_ready(sender: object, **_: object) -> None:
    global _heartbeat
    pool = getattr(sender, "pool", None)
    prefork = isinstance(pool, PreforkPool)
    if not prefork:
        process_state().warm()
    hostname = str(getattr(sender, "hostname", "worker"))
    queues = ",".join(sorted(q.name for q in app.amqp.queues.consume_from.values()))
    client = process_state().redis if not prefork else redis.Redis.from_url(settings.redis_url, decode_responses=True)
    live_info = None
    if not prefork:
        runtime = process_state().runtime

        def live_info() -> dict[str, str]:
            # Each beat also picks up new artifact versions, so a worker with
            # no jobs still switches, and reports the version it serves.
            runtime.refresh()
            return {"programs": json.dumps(runtime.versions())}

    # A prefork pool's programs live in its children, which send no heartbeat:
    # such a worker reports no versions (`GET /programs` shows null).
    _heartbeat = Heartbeat(
        client, settings, hostname, {"queues": queues, "pool": type(pool).__module__}, live_info=live_info
    )
    _heartbeat.start()
    updates = JobUpdates(client, settings)

    def requeue_lost(job_id: str) -> None:
        lost = {"status": "retrying", "reason": "the worker running this job was lost", "delay_s": 0}
        if updates.emit(job_id, EventType.status, lost, {"status": JobStatus.queued.value}) > 0:
            requeue(client, job_id)

    Reaper(client, settings, requeue_lost, send).start()
    copies = "kept" if app.conf.broker_transport_options.get("ack_emulation", True) else "not kept (core/queue.py)"
    log.info("worker %s ready on queues %s; kombu's copies of taken messages %s", hostname, queues, copies)


@signals.worker_shutdown.connect
def _on_shutdown(**_: object) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
