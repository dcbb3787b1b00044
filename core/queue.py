"""The Celery app both sides share: broker, serialization, queues, delivery.

The API and Flower use this app as it is (they send and watch tasks by name
and never import dspy); `worker.celery_app` adds the task implementations.

Delivery is at-least-once: late acks, requeue when a worker process is lost,
prefetch 1 so a busy worker does not sit on messages another could run. A
redelivered message is harmless: the job's lease or finished status turns
it away (worker/leases.py), so the visibility timeout does not have to
outlast the longest job. JSON only: pickle would let anyone who can write to
Redis run code in the workers.

A worker that does not run batch expansions consumes without kombu's ack
emulation (`broker_ack_emulation`, core/settings.py; `ack_emulation_for`):
kombu then keeps the messages it took in memory only, and a message taken
by a worker that dies is recovered from our own records instead (a job's
`queued` note and lease, worker/leases.py), which the reaper watches anyway.

kombu's Redis transport builds a new `redis.Redis` client for nearly every
command it sends outside its consumer loop (a publish, an ack, a task event,
the exchange lookup before a publish): `Channel.conn_or_acquire()` calls
`_create_client()` each time, and constructing a client copies its table of
response callbacks, about 180 us on the benchmark machine. A task costs
several of them in the worker and in the API. A client is only a handle on
the channel's connection pool and is safe to share between threads, so
`_reuse_redis_clients` makes each channel keep one per pool.
"""

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from celery import Celery, bootsteps
from kombu.entity import Exchange, Queue
from kombu.transport import redis as kombu_redis

from core.settings import Settings, get_settings

RUN_JOB_TASK = "dspy_jobs.run_job"
EXPAND_BATCH_TASK = "dspy_jobs.expand_batch"


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("dspy_jobs", broker=settings.redis_url, set_as_current=False)
    visibility_timeout_s = settings.broker_visibility_timeout_s
    queues = (settings.interactive_queue, settings.bulk_queue)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        # Results and state live in our own job records; Celery keeps none.
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_pool=settings.worker_pool,
        worker_concurrency=settings.worker_concurrency,
        broker_transport_options={
            "visibility_timeout": visibility_timeout_s,
            # How a message taken by a worker that died comes back. kombu looks
            # for expired unacked messages every `unacked_restore_interval`
            # seconds but, by default, scans only at every 10th look (every
            # 100 s), under a mutex that a worker killed while holding it keeps
            # for 5 minutes: a job could sit `queued` for minutes after its
            # worker was killed (tests/test_faults.py). Scan at every look, and
            # let a dead holder's mutex go after 30 s; a restore takes
            # milliseconds, and one message is never restored twice (kombu
            # restores each under WATCH).
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": 30,
        },
        result_backend_transport_options={"visibility_timeout": visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        # A publish while Redis is down fails within `enqueue_timeout_s`
        # instead of blocking the request behind kombu's default retries.
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
        # Each queue gets its own exchange and key: left to Celery's defaults,
        # both would bind to the default queue's key and every interactive
        # message would land in both queues (and run twice).
        task_queues=[Queue(q, Exchange(q, type="direct"), routing_key=q) for q in queues],
        task_default_queue=settings.interactive_queue,
        task_default_exchange=settings.interactive_queue,
        task_default_routing_key=settings.interactive_queue,
        # Batch items are sent to the bulk queue explicitly (worker/batches.py).
        task_routes={
            RUN_JOB_TASK: {"queue": settings.interactive_queue},
            EXPAND_BATCH_TASK: {"queue": settings.bulk_queue},
        },
        # Flower shows tasks from these events (`TASK_EVENTS`, core/settings.py).
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        worker_hijack_root_logger=False,
    )
    app.steps["worker"].add(_ack_emulation_step(settings))
    return app


def _ack_emulation_step(settings: Settings) -> type[bootsteps.Step]:
    """A worker bootstep that sets kombu's ack emulation from the queues the worker consumes (`-Q`).

    Worker bootsteps are built after the queues are chosen and before the
    consumer opens its broker connection, which reads the transport options."""

    class AckEmulation(bootsteps.Step):
        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            conf = parent.app.conf
            enabled = ack_emulation_for(settings, parent.app.amqp.queues.consume_from)
            conf.broker_transport_options = {**conf.broker_transport_options, "ack_emulation": enabled}

    return AckEmulation


def ack_emulation_for(settings: Settings, queues: Iterable[str]) -> bool:
    """Whether a worker consuming `queues` keeps kombu's copy of each message it takes (see above)."""
    if settings.broker_ack_emulation == "auto":
        return settings.bulk_queue in queues
    return settings.broker_ack_emulation == "on"


def _reuse_redis_clients() -> None:
    """One `redis.Redis` per kombu channel and pool instead of one per command (see above)."""
    if getattr(kombu_redis.Channel.conn_or_acquire, "reuses_clients", False):
        return

    @contextlib.contextmanager
    def conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool  # replaced by kombu after a connection error: a new pool gets a new client
        cached = self.__dict__.get("_dj_client")
        if cached is None or cached[0] is not pool:
            cached = self.__dict__["_dj_client"] = (pool, self._create_client())
        yield cached[1]

    conn_or_acquire.reuses_clients = True  # type: ignore[attr-defined]
    kombu_redis.Channel.conn_or_acquire = conn_or_acquire  # type: ignore[method-assign]


_reuse_redis_clients()

# Module-level app for `celery -A core.queue flower`.
app = make_celery()
