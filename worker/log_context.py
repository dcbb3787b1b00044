"""The log context of one job run in a worker: its ids, and what must stay out of the logs."""

import contextlib
import json
from collections.abc import Iterator

from core.logging_setup import log_context
from core.settings import Settings


def _input_values(fields: dict[str, str]) -> list[str]:
    try:
        values = json.loads(fields.get("input") or "{}")
    except ValueError:
        return []
    return [v for v in values.values() if isinstance(v, str)] if isinstance(values, dict) else []


@contextlib.contextmanager
def job_log_context(settings: Settings, job_id: str, fields: dict[str, str]) -> Iterator[None]:
    """Every line logged while the job runs carries its id (and its batch's); its input, from the record
    `fields`, is cut out of them unless LOG_PAYLOADS, wherever it would show up (an error quoting the prompt)."""
    payloads = [] if settings.log_payloads else _input_values(fields)
    with log_context(job_id=job_id, payloads=payloads):
        yield
