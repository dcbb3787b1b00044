"""The worker's consumer retries a lost broker connection every 0.5 s, growing to 2 s (worker/consumer.py)."""

import re

import pytest
from kombu.connection import Connection
from kombu.exceptions import OperationalError

from core.queue import make_celery
from core.settings import Settings
from harness.processes import free_port
from worker.consumer import Consumer


def test_retries_to_a_broker_that_does_not_answer_come_at_the_consumers_intervals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_celery(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    app.conf.broker_connection_max_retries = 2
    consumer = Consumer.__new__(Consumer)  # only what ensure_connected reads
    consumer.app = app
    consumer.first_connection_attempt = False
    consumer.broker_connection_retry_attempt = 0
    with Connection(app.conf.broker_url, connect_timeout=0.2) as conn, pytest.raises(OperationalError):
        consumer.ensure_connected(conn)
    # Celery words a wait under a second as "now"; its own schedule would be 2, then 4 s.
    waits = re.findall(r"Trying again (now|in [\d.]+ seconds?)", caplog.text)
    assert waits == ["now", "in 1.00 second"]
