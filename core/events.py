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
    # half of one attempt glued to another.
    status = "status"
    token = "token"  # a chunk of an output field; data: {"field": ..., "text": ...}
    result = "result"  # terminal: the job succeeded; data: the job record
    error = "error"  # terminal: the job failed or was cancelled; data: the job record


TERMINAL_EVENTS = frozenset({EventType.result, EventType.error})

# A Lua function, for scripts that append events (this module's, the worker's
# in worker/job_updates.py): job hash, event stream, channel (not a key, but
# passed like one so the script holds no key-name logic), event type, event
# data JSON, stream maxlen, ttl_s, and a table of field/value pairs to HSET
# on the job hash with the event.
# Returns the event's sequence number; -1 if the job no longer exists; -2 if
# it is already finished (succeeded, failed, cancelled): a finished job takes
# no more events, so a cancelled job's worker is told to stop by its next
# write, and can never overwrite the cancellation with a late result.
APPEND_EVENT_FUNCTION = (
    """
local function append_event(job, events, channel, event_type, data, maxlen, ttl_s, updates)
  local status = redis.call('HGET', job, 'status')
  if not status then
    return -1
  end
  if status == 'succeeded' or status == 'failed' or status == 'cancelled' then
    return -2
  end
  local seq = redis.call('HINCRBY', job, 'seq', 1)
  local new_status, usage = nil, nil
  for i = 1, #updates - 1, 2 do
    if updates[i] == 'status' then new_status = updates[i + 1] end
    if updates[i] == 'usage' then usage = updates[i + 1] end
  end
  if #updates > 0 then
    redis.call('HSET', job, unpack(updates))
  end
  -- A batch item moves its batch's counters in the same step (core/batches.py).
  local batch = redis.call('HGET', job, 'batch_key')
  if batch and new_status and new_status ~= status then
    local now = redis.call('TIME')
    now = now[1] .. '.' .. string.format('%06d', now[2])
    redis.call('HINCRBY', batch, 'n_' .. status, -1)
    redis.call('HINCRBY', batch, 'n_' .. new_status, 1)
    redis.call('HINCRBY', batch, 'version', 1)
    if usage then
      local u = cjson.decode(usage)
      redis.call('HINCRBY', batch, 'prompt_tokens', u['prompt_tokens'] or 0)
      redis.call('HINCRBY', batch, 'completion_tokens', u['completion_tokens'] or 0)
    end
    local b = redis.call('HMGET', batch, 'status', 'total', 'n_succeeded', 'n_failed', 'n_cancelled')
    if new_status == 'running' and b[1] == 'queued' then
      redis.call('HSET', batch, 'status', 'running', 'started_at', now)
    end
    if tonumber(b[3]) + tonumber(b[4]) + tonumber(b[5]) >= tonumber(b[2]) then
      local final = 'completed'
      if b[1] == 'cancelling' then final = 'cancelled' end
      redis.call('HSET', batch, 'status', final, 'finished_at', now)
    end
  end
  local payload = '{"seq":' .. seq .. ',"type":"' .. event_type .. '","data":' .. data .. '}'
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, seq .. '-0', 'e', payload)
  redis.call('EXPIRE', events, ttl_s)
  redis.call('PUBLISH', channel, payload)
  if not batch and (event_type == 'result' or event_type == 'error') then
    redis.call('PUBLISH', '"""
    + keys.JOBS_DONE
    + """', redis.call('HGET', job, 'id') .. ' ' .. payload)
  end
  return seq
end
"""
)

# One event. KEYS: job hash, event stream, channel. ARGV: event type, event
# data JSON, stream maxlen, ttl_s, then field/value pairs to HSET on the job
# hash. Returns what `append_event` returns.
APPEND_EVENT_LUA = (
    APPEND_EVENT_FUNCTION
    + """
return append_event(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], {unpack(ARGV, 5)})
"""
)


JOB_MISSING = -1
JOB_FINISHED = -2


def append_event_args(
    job_id: str,
    event_type: EventType,
    data: dict[str, Any],
    *,
    maxlen: int,
    ttl_s: int,
    job_updates: dict[str, str] | None = None,
) -> tuple[list[str], list[str]]:
    """KEYS and ARGV for `APPEND_EVENT_LUA`, for a sync or an asyncio client."""
    argv = [event_type.value, json.dumps(data, separators=(",", ":")), str(maxlen), str(ttl_s)]
    for field, value in (job_updates or {}).items():
        argv += [field, value]
    return [keys.job(job_id), keys.job_events(job_id), keys.job_channel(job_id)], argv


def split_event(payload: str) -> tuple[int, str, str]:
    """(seq, type, data JSON) of an event as `append_event` writes it, read by position, not parsed: the
    readers that fan events out to many clients only need to pass the data on."""
    comma = payload.index(",", 7)  # after '{"seq":<seq>'
    type_end = payload.index('"', comma + 9)  # after ',"type":"<type>'
    return int(payload[7:comma]), payload[comma + 9 : type_end], payload[type_end + 9 : -1]
