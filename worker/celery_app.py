"""The Celery worker: `celery -A worker.celery_app worker -Q interactive` (or `-Q bulk`).

Celery delivers interactive jobs: each message reaches one of the worker's
threads (`-c`, WORKER_CONCURRENCY), which hands the job to the process's
engine (worker/engine.py) and waits only until it has started. A worker of
the bulk queue runs the bulk loops, which take batch items as the LM has
room (worker/bulk.py); its Celery queue carries nothing else. The pool is
always `threads`: the jobs themselves run on the engine's event loop.
"""

import logging
import os
import threading

from celery import signals

import patches
from core.logging_setup import configure_logging, log_context
from core.queue import RUN_JOB_TASK, make_celery
from core.settings import get_settings
from worker.engine import Engine

log = logging.getLogger(__name__)

settings = get_settings()
app = make_celery(settings)
# Reconnects to the broker within a second or two of a Redis failover (worker/consumer.py).
app.conf.worker_consumer = "worker.consumer:Consumer"

_engine_lock = threading.Lock()
_engine: Engine | None = None


def engine() -> Engine:
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = Engine(settings, app)
        return _engine


@app.task(name=RUN_JOB_TASK)
def run_job(job_id: str, model: str = "") -> None:
    with log_context(job_id=job_id):
        engine().take(job_id, model or None)


@signals.setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: object) -> None:
    # Connected, so Celery leaves logging to us: one format (LOG_FORMAT), job ids, secrets masked.
    configure_logging(settings, level=loglevel or None)


@signals.celeryd_after_setup.connect
def _install(**_: object) -> None:
    patches.install(patches.WORKER, settings)


@signals.worker_ready.connect
def _on_ready(sender: object, **_: object) -> None:
    hostname = str(getattr(sender, "hostname", "worker"))
    queues = sorted(q.name for q in app.amqp.queues.consume_from.values())
    engine().start(hostname, queues)
    copies = "kept" if app.conf.broker_transport_options.get("ack_emulation", True) else "not kept (core/queue.py)"
    log.info(
        "worker %s (pid %s) ready on queues %s; kombu's copies of taken messages %s",
        hostname,
        os.getpid(),
        ",".join(queues),
        copies,
    )


@signals.worker_shutting_down.connect
def _on_shutting_down(**_: object) -> None:
    if _engine is not None:
        _engine.stop_taking()


@signals.worker_shutdown.connect
def _on_shutdown(**_: object) -> None:
    if _engine is not None:
        _engine.drain()
