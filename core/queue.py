"""The Celery app both sides share: broker, serialization, queues, delivery.

The API and Flower use this app as it is (they send and watch tasks by name
and never import dspy; Flower's is core/flower_app.py); `worker.celery_app`
adds the task implementations. Importing this module builds no app.

Delivery: late acks, prefetch 1 so a busy worker does not sit on messages
another could run, and no kombu ack emulation: kombu keeps the messages a
worker took in memory only (a copy in Redis would cost two round trips per
message, about half of what Celery itself costs per message,
bench/results/celery_floor.md). A message taken by a worker that dies is
recovered from our own records instead: a job is noted queued until a
worker claims it and leased while one holds it, and the reaper sends again
a job lost at either step (worker/reaper.py). A redelivered message is
harmless: the job's lease or finished status turns it away. JSON only:
pickle would let anyone who can write to Redis run code in the workers.

kombu's Redis client per command is replaced by one per pool: the
`kombu_clients` patch (patches/kombu_clients.py), installed by the worker at
start-up.
"""

from celery import Celery
from kombu.entity import Exchange, Queue

from core.redis_clients import broker_transport_options, broker_url
from core.settings import Settings, get_settings

RUN_JOB_TASK = "dspy_jobs.run_job"


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("dspy_jobs", broker=broker_url(settings), set_as_current=False)
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
        # Threads only hand jobs to the worker's event loop (worker/engine.py).
        worker_pool="threads",
        worker_concurrency=settings.worker_concurrency,
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        # A worker's publish (a retry, a job sent again) while Redis is down fails
        # within seconds instead of blocking behind kombu's default retries.
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
        # Batch items do not travel as messages: bulk workers pick them (worker/bulk.py).
        task_routes={RUN_JOB_TASK: {"queue": settings.interactive_queue}},
        # Flower shows tasks from these events (`TASK_EVENTS`, core/settings.py).
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        worker_hijack_root_logger=False,
    )
    return app
