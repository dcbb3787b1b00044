"""Celery's consumer, reconnecting to the broker on a schedule that fits a Redis failover.

Celery retries a lost broker connection after 2 s, then 4 s, 6 s... (kombu's
defaults; Celery passes no intervals and has no setting for them). After a
Sentinel failover the new primary answers within `down-after-milliseconds`
plus a second or two, and with those defaults the consumer found it about
6 s after the kill where the API was accepting jobs again after 2 s
(bench/failover.py with down-after-milliseconds 1000; with this consumer, 3 s:
bench/results/failover-down-after-1000.md). This consumer asks kombu for its retries every
0.5 s, growing to 2 s; it is installed through Celery's `worker_consumer`
setting (worker/celery_app.py).
"""

import functools
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

RETRY_START_S, RETRY_STEP_S, RETRY_MAX_S = 0.5, 0.5, 2.0


class Consumer(CeleryConsumer):
    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(
            conn.ensure_connection, interval_start=RETRY_START_S, interval_step=RETRY_STEP_S, interval_max=RETRY_MAX_S
        )
        return super().ensure_connected(conn)
