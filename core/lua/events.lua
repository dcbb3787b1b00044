-- Events and batch counters: the helpers every other family builds on.
--
-- A job's events are written only here (append_event), so a status change and
-- its event can never disagree, a finished job takes no more events, and a
-- writer whose lease was taken over is refused (core/events.py describes the
-- format; worker/job_store.py the lease). The terminal statuses come from
-- core/jobs.py and core/batches.py, the refusals (NO_JOB, FINISHED, FENCED,
-- ...) from core/refusals.py: core/scripts.py writes them in.

__REFUSALS__
local TERMINAL = __TERMINAL_STATUSES__
local BATCH_TERMINAL = __TERMINAL_BATCH_STATUSES__

local function now_text()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', t[2])
end

local function num(value)
  return tonumber(value) or 0
end

-- Ends the batch once every item has ended: `cancelled` if a cancel was asked
-- for, `expired` if any item expired, `completed` otherwise. A completed
-- batch's inputs are no longer needed (every item's record holds its own);
-- a cancelled or expired one keeps them until its TTL, since items that never
-- started have no record and are described from them (custom_id, input).
local function batch_maybe_done(batch)
  local b = redis.call('HMGET', batch, 'status', 'total', 'n_succeeded', 'n_failed', 'n_cancelled', 'n_expired',
    'cancel_requested', 'inputs_key')
  if not b[1] or BATCH_TERMINAL[b[1]] then return end
  if num(b[3]) + num(b[4]) + num(b[5]) + num(b[6]) < num(b[2]) then return end
  local final = 'completed'
  if b[1] == 'cancelling' or b[7] then
    final = 'cancelled'
  elseif num(b[6]) > 0 then
    final = 'expired'
  end
  redis.call('HSET', batch, 'status', final, 'finished_at', now_text())
  batch_indexed(batch, b[1], final)
  redis.call('HINCRBY', batch, 'version', 1)
  webhook_enqueue(batch, 'batch', final)
  if b[8] and final == 'completed' then redis.call('DEL', b[8]) end
end

-- `n` items of a batch move from status `from` to status `to`.
local function batch_items_moved(batch, from, to, n, usage)
  -- Not `-n`: Lua writes -0 as "-0", which HINCRBY refuses.
  redis.call('HINCRBY', batch, 'n_' .. from, 0 - n)
  redis.call('HINCRBY', batch, 'n_' .. to, n)
  redis.call('HINCRBY', batch, 'version', 1)
  if usage then
    local u = cjson.decode(usage)
    redis.call('HINCRBY', batch, 'prompt_tokens', u['prompt_tokens'] or 0)
    redis.call('HINCRBY', batch, 'completion_tokens', u['completion_tokens'] or 0)
  end
  if to == 'running' and redis.call('HGET', batch, 'status') == 'queued' then
    redis.call('HSET', batch, 'status', 'running', 'started_at', now_text())
    batch_indexed(batch, 'queued', 'running')
  end
  batch_maybe_done(batch)
end

-- Appends one event to a job: job hash, event stream, channel, event type,
-- event data JSON, stream maxlen, ttl_s, a table of field/value pairs to HSET
-- on the job with the event, and the writer's lease token ('' or nil: a writer
-- that holds none, such as the API cancelling).
-- Returns the event's sequence number; NO_JOB if the job no longer exists;
-- FINISHED if it has ended (it takes no more events); FENCED if `fence` no
-- longer holds it.
local function append_event(job, events, channel, event_type, data, maxlen, ttl_s, updates, fence)
  local status = redis.call('HGET', job, 'status')
  if not status then return NO_JOB end
  if TERMINAL[status] then return FINISHED end
  if fence and fence ~= '' and redis.call('HGET', job, 'lease') ~= fence then return FENCED end
  local seq = redis.call('HINCRBY', job, 'seq', 1)
  local new_status, usage = nil, nil
  for i = 1, #updates - 1, 2 do
    if updates[i] == 'status' then new_status = updates[i + 1] end
    if updates[i] == 'usage' then usage = updates[i + 1] end
  end
  if #updates > 0 then
    redis.call('HSET', job, unpack(updates))
  end
  local batch = redis.call('HGET', job, 'batch_key')
  if new_status and new_status ~= status then
    if batch then
      item_indexed(job, batch, status, new_status, ttl_s)
      batch_items_moved(batch, status, new_status, 1, usage)
    else
      job_indexed(job, status, new_status, TERMINAL[new_status])
    end
  end
  if new_status and TERMINAL[new_status] and not batch then webhook_enqueue(job, 'job', new_status) end
  local payload = '{"seq":' .. seq .. ',"type":"' .. event_type .. '","data":' .. data .. '}'
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, seq .. '-0', 'e', payload)
  redis.call('EXPIRE', events, ttl_s)
  redis.call('PUBLISH', channel, payload)
  if not batch and (event_type == 'result' or event_type == 'error') then
    redis.call('PUBLISH', '__JOBS_DONE__', redis.call('HGET', job, 'id') .. ' ' .. payload)
  end
  return seq
end

-- KEYS: job hash, event stream, channel. ARGV: event type, data JSON, maxlen,
-- ttl_s, fence token ('' for none), then field/value pairs for the job hash.
redis.register_function('append_event', function(keys, args)
  return append_event(keys[1], keys[2], keys[3], args[1], args[2], args[3], args[4], {unpack(args, 6)}, args[5])
end)
