"""The worker's writes to a job: record fields and the matching event, atomically."""

import json
from typing import Any

import redis

from core.events import APPEND_EVENT_LUA, EventType, append_event_args
from core.jobs import JobLinks, job_from_fields
from core.settings import Settings


class JobUpdates:
    def __init__(self, redis_client: redis.Redis, settings: Settings) -> None:
        self._append = redis_client.register_script(APPEND_EVENT_LUA)
        self._settings = settings

    def emit(
        self, job_id: str, event_type: EventType, data: dict[str, Any], job_updates: dict[str, str] | None = None
    ) -> int:
        """Append an event (and apply `job_updates` to the record); -1 if the job is gone."""
        script_keys, argv = append_event_args(
            job_id,
            event_type,
            data,
            maxlen=self._settings.event_stream_maxlen,
            ttl_s=self._settings.job_ttl_s,
            job_updates=job_updates,
        )
        seq: int = self._append(keys=script_keys, args=argv)
        return seq

    def finish(self, job_id: str, fields: dict[str, str], event_type: EventType, updates: dict[str, str]) -> None:
        """Write the terminal state; its event carries the whole public record."""
        record = job_from_fields({**fields, **updates}, JobLinks.for_job(job_id))
        self.emit(job_id, event_type, record.model_dump(mode="json"), updates)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_jsonable)


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    return str(value)
