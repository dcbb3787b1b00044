"""The Celery worker: `celery -A worker.celery_app worker -P threads -c 64 -Q interactive`.

Pool: `threads`. A job spends nearly all its time waiting for the LM, so one
process with many threads keeps many LM calls in flight while loading the
program and the LM once; a prefork pool of 2 on a 2-core machine would run 2
jobs at a time and hold two copies of everything. Prefork still works (each
child loads once in `worker_process_init`) for CPU-heavy programs.
"""

import logging
import os
import threading
from typing import cast

import redis
from celery import Task, signals
from celery.concurrency.prefork import TaskPool as PreforkPool

from core import keys
from core.queue import RUN_JOB_TASK, make_celery
from core.settings import get_settings
from worker import execution
from worker.heartbeat import Heartbeat
from worker.job_updates import JobUpdates
from worker.runtime import Runtime

log = logging.getLogger(__name__)

settings = get_settings()
app = make_celery(settings)

_process_lock = threading.Lock()
_process: "_ProcessState | None" = None
_heartbeat: Heartbeat | None = None


class _ProcessState:
    """Per-process clients, created in the process that runs jobs (after fork)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.redis = redis.Redis.from_url(
            settings.redis_url, decode_responses=True, socket_connect_timeout=5, socket_timeout=30
        )
        self.runtime = Runtime(settings, self.redis)
        self.updates = JobUpdates(self.redis, settings)

    def warm(self) -> None:
        """Load the default program and the LM client now, not on the first job."""
        self.runtime.program(settings.default_program)
        self.runtime.lm()
        import litellm  # noqa: F401  (seconds of import; pay them before the first job)


def process_state() -> _ProcessState:
    global _process
    with _process_lock:
        if _process is None or _process.pid != os.getpid():
            _process = _ProcessState()
        return _process


@app.task(name=RUN_JOB_TASK, bind=True)
def run_job(self: Task, job_id: str) -> None:
    state = process_state()
    fields = cast(dict[str, str], state.redis.hgetall(keys.job(job_id))) or None
    execution.run(job_id, state.runtime, state.updates, fields, f"{self.request.hostname}:{os.getpid()}")


@signals.worker_process_init.connect
def _init_prefork_child(**_: object) -> None:
    process_state().warm()


@signals.worker_ready.connect
def _on_ready(sender: object, **_: object) -> None:
    global _heartbeat
    pool = getattr(sender, "pool", None)
    if not isinstance(pool, PreforkPool):
        process_state().warm()
    hostname = str(getattr(sender, "hostname", "worker"))
    queues = ",".join(sorted(q.name for q in app.amqp.queues.consume_from.values()))
    state = process_state() if not isinstance(pool, PreforkPool) else None
    client = state.redis if state else redis.Redis.from_url(settings.redis_url, decode_responses=True)
    _heartbeat = Heartbeat(client, settings, hostname, {"queues": queues, "pool": type(pool).__module__})
    _heartbeat.start()
    log.info("worker %s ready on queues %s", hostname, queues)


@signals.worker_shutdown.connect
def _on_shutdown(**_: object) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
