"""The worker's writes to a job: record fields and the matching events, atomically.

A job that runs the ordinary way costs two round trips to Redis here, one
script to start it and one to finish it; each used to be five or six
separate commands (lease, batch check, record read, `running` event; token
events, result, lease release, three for the metrics), and each round trip
costs the worker Python CPU it spends on nothing else.

- `start`: checks the job may run (exists, not finished, not a queued item
  of a cancelled batch, no live lease held by another worker), takes its
  lease, counts the attempt, writes the `running` event and returns the
  record as it now stands. Past `job_max_attempts` it does all that except
  the event, and the caller fails the job.
- `finish`: appends the job's last events (for a job that does not stream,
  each output field whole, then the result) and the final record fields,
  releases the lease and adds the job's outcome to the metrics
  (worker/metrics.py), all or nothing: a job cancelled meanwhile refuses
  the first event and only the lease is released.

They touch the job's keys and the global lease set and metrics hashes, so
like worker/leases.py they assume a single Redis, not a cluster.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from core import keys
from core.events import APPEND_EVENT_FUNCTION, APPEND_EVENT_LUA, EventType, append_event_args
from core.jobs import JobLinks, job_from_fields
from core.settings import Settings
from worker.metrics import COUNTED_FIELD, Increment, outcome_increments

# KEYS: job hash, event stream, channel, lease set, then the queued set of each
# queue. ARGV: job id, now, lease expiry, worker name, max attempts, stream
# maxlen, ttl_s.
# Returns {code, status} or {attempts, record as a flat field/value list}.
START_LUA = (
    APPEND_EVENT_FUNCTION
    + """
-- Taken from its queue: whatever happens next, its message is not lost.
for i = 5, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {-1, ''} end
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then return {-2, status} end
local batch = redis.call('HGET', KEYS[1], 'batch_key')
if batch and redis.call('HGET', batch, 'cancel_requested') then
  return {-4, redis.call('HGETALL', KEYS[1])}
end
local held = redis.call('ZSCORE', KEYS[4], ARGV[1])
if held and tonumber(held) > tonumber(ARGV[2]) then return {-3, status} end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[1], 'worker', ARGV[4], 'started_at', ARGV[2])
if attempts <= tonumber(ARGV[5]) then
  -- Every attempt starts with this event; a reader drops the token text of
  -- any earlier attempt when it sees it (core/events.py).
  local data = '{"status":"running","attempt":' .. attempts .. '}'
  append_event(KEYS[1], KEYS[2], KEYS[3], 'status', data, ARGV[6], ARGV[7], {'status', 'running'})
end
return {attempts, redis.call('HGETALL', KEYS[1])}
"""
)

# KEYS: job hash, event stream, channel, lease set, metrics counters, metrics
# histograms. ARGV: job id, stream maxlen, ttl_s, number of events n, then n
# (type, data) pairs (the last one is the terminal event), number of record
# fields m, m field/value pairs written with the terminal event, then
# (hash: c or h, field, op: i or f, amount) metrics increments to the end.
# Returns the terminal event's sequence number, or what `append_event`
# refused the first event with (then only the lease is released).
FINISH_LUA = (
    APPEND_EVENT_FUNCTION
    + """
local n = tonumber(ARGV[4])
local m = tonumber(ARGV[5 + 2 * n])
local fields_at = 6 + 2 * n
local seq = 0
for i = 1, n do
  local updates = {}
  if i == n then updates = {unpack(ARGV, fields_at, fields_at + 2 * m - 1)} end
  seq = append_event(KEYS[1], KEYS[2], KEYS[3], ARGV[3 + 2 * i], ARGV[4 + 2 * i], ARGV[2], ARGV[3], updates)
  if seq < 0 then break end
end
redis.call('ZREM', KEYS[4], ARGV[1])
if seq < 0 then return seq end
if redis.call('HSETNX', KEYS[1], '"""
    + COUNTED_FIELD
    + """', '1') == 1 then
  for i = fields_at + 2 * m, #ARGV, 4 do
    local hash = KEYS[5]
    if ARGV[i] == 'h' then hash = KEYS[6] end
    if ARGV[i + 2] == 'f' then
      redis.call('HINCRBYFLOAT', hash, ARGV[i + 1], ARGV[i + 3])
    else
      redis.call('HINCRBY', hash, ARGV[i + 1], ARGV[i + 3])
    end
  end
end
return seq
"""
)

NO_JOB, FINISHED, LEASED, BATCH_CANCELLED = -1, -2, -3, -4


@dataclass
class Started:
    """What `start` found: `attempts` (> 0 when the job is now this worker's) or one of the codes above."""

    attempts: int
    status: str = ""
    fields: dict[str, str] | None = None


class JobUpdates:
    def __init__(self, redis_client: redis.Redis, settings: Settings) -> None:
        self._append = redis_client.register_script(APPEND_EVENT_LUA)
        self._start = redis_client.register_script(START_LUA)
        self._finish = redis_client.register_script(FINISH_LUA)
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

    def start(self, job_id: str, worker_name: str, now: float) -> Started:
        """Take the job's lease and start an attempt (see the module docstring)."""
        code, found = self._start(
            keys=[
                keys.job(job_id),
                keys.job_events(job_id),
                keys.job_channel(job_id),
                keys.RUNNING,
                *(keys.queued(q) for q in (self._settings.interactive_queue, self._settings.bulk_queue)),
            ],
            args=[
                job_id,
                repr(now),
                repr(now + self._settings.job_lease_s),
                worker_name,
                self._settings.job_max_attempts,
                self._settings.event_stream_maxlen,
                self._settings.job_ttl_s,
            ],
        )
        if isinstance(found, list):
            return Started(int(code), fields=dict(zip(found[::2], found[1::2], strict=True)))
        return Started(int(code), status=str(found))

    def finish(
        self,
        job_id: str,
        fields: dict[str, str],
        event_type: EventType,
        updates: dict[str, str],
        tokens: Sequence[tuple[str, str]] = (),
    ) -> int:
        """Write the terminal state after any `tokens` (field, text); its event carries the whole public record.

        Releases the lease and counts the outcome in the metrics in the same step. Returns the terminal
        event's sequence number, or JOB_MISSING / JOB_FINISHED when the job refused it (nothing written).
        """
        final = {**fields, **updates}
        record = job_from_fields(final, JobLinks.for_job(job_id))
        events = [(EventType.token.value, dumps({"field": f, "text": t})) for f, t in tokens]
        events.append((event_type.value, record.model_dump_json()))
        argv: list[str | int | float] = [
            job_id,
            self._settings.event_stream_maxlen,
            self._settings.job_ttl_s,
            len(events),
        ]
        for pair in events:
            argv += pair
        argv.append(len(updates))
        for pair in updates.items():
            argv += pair
        argv += _metrics_args(outcome_increments(final, self._settings.lm_model))
        seq: int = self._finish(
            keys=[
                keys.job(job_id),
                keys.job_events(job_id),
                keys.job_channel(job_id),
                keys.RUNNING,
                keys.METRICS_COUNTERS,
                keys.METRICS_HISTOGRAMS,
            ],
            args=argv,
        )
        return seq


def _metrics_args(increments: list[Increment]) -> list[str | int | float]:
    args: list[str | int | float] = []
    for key, field, amount in increments:
        hash_code = "h" if key == keys.METRICS_HISTOGRAMS else "c"
        args += [hash_code, field, "f" if isinstance(amount, float) else "i", repr(amount)]
    return args


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_jsonable)


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    return str(value)
