"""A job's ordered event log: Redis Stream for replay, pub/sub for the live tail.

Every event gets the next sequence number of its job (`seq` in the job hash)
and is written by one Lua script that, atomically: checks the job still
exists, bumps `seq`, applies any job-record field updates that go with the
event (so a status change and its event can never disagree), appends the
event to the capped Stream under the entry id `<seq>-0`, refreshes the
Stream's TTL and publishes the same JSON on the job's channel.

Readers therefore subscribe first, replay the Stream after the last sequence
they saw, then follow pub/sub dropping sequences they already have: nothing
is lost (the Stream keeps it) and nothing is repeated (sequences dedupe).

The terminal event of a job that is not a batch item is also published on
one channel shared by all jobs (`keys.JOBS_DONE`), prefixed with the job id:
`?wait` needs only that event, and following one channel for good costs the
API far less than subscribing to each waited job's channel and reading every
one of its events.
"""

import json
from enum import StrEnum
from typing import Any

from core import keys


class EventType(StrEnum):
    # The job changed status; data: {"status": ...}. A `running` event also
    # carries {"attempt": n} and starts that attempt: a reader discards any
    # token text it collected before it, so a retried job never reads as
    # half of one attempt glued to another. `retrying` (back in the queue,
    # with `delay_s` and the `error`) and `waiting` (for LM capacity: `reason`,
    # `model`, and `until` when the model is paused) say why nothing happens.
    status = "status"
    token = "token"  # a chunk of an output field; data: {"field": ..., "text": ...}
    result = "result"  # terminal: the job succeeded; data: the job record
    error = "error"  # terminal: the job failed or was cancelled; data: the job record


TERMINAL_EVENTS = frozenset({EventType.result, EventType.error})

# Events are appended by `append_event` in core/lua/events.lua, and only
# there: every script that writes one (creating, starting, finishing,
# cancelling a job) calls it.


def append_event_args(
    job_id: str,
    event_type: EventType,
    data: dict[str, Any],
    *,
    maxlen: int,
    ttl_s: int,
    job_updates: dict[str, str] | None = None,
    fence: str = "",
) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of the `append_event` function; `fence`: the writer's lease token, if it holds one."""
    argv = [event_type.value, json.dumps(data, separators=(",", ":")), str(maxlen), str(ttl_s), fence]
    for field, value in (job_updates or {}).items():
        argv += [field, value]
    return [keys.job(job_id), keys.job_events(job_id), keys.job_channel(job_id)], argv


def split_event(payload: str) -> tuple[int, str, str]:
    """(seq, type, data JSON) of an event as `append_event` writes it, read by position, not parsed: the
    readers that fan events out to many clients only need to pass the data on."""
    comma = payload.index(",", 7)  # after '{"seq":<seq>'
    type_end = payload.index('"', comma + 9)  # after ',"type":"<type>'
    return int(payload[7:comma]), payload[comma + 9 : type_end], payload[type_end + 9 : -1]
