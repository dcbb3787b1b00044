"""The log context of one job run in a worker: its ids, and what must stay out of the logs."""

import contextlib
import json
import logging
from collections.abc import Iterator

import redis

from core import keys
from core.logging_setup import log_context
from core.settings import Settings

log = logging.getLogger(__name__)


def _input_values(client: redis.Redis, job_id: str) -> list[str]:
    try:
        raw = client.hget(keys.job(job_id), "input")
        values = json.loads(str(raw)) if raw else {}
    except (redis.RedisError, ValueError):
        return []
    return [v for v in values.values() if isinstance(v, str)] if isinstance(values, dict) else []


@contextlib.contextmanager
def job_log_context(client: redis.Redis, settings: Settings, job_id: str) -> Iterator[None]:
    """Every line logged while the job runs carries its id (and its batch's); its question is
    cut out of them unless LOG_PAYLOADS, wherever it would show up (an error quoting the prompt)."""
    payloads = [] if settings.log_payloads else _input_values(client, job_id)
    with log_context(job_id=job_id, payloads=payloads):
        yield
