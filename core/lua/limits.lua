-- Per-key limits of the API (api/submission_rate.py, api/stream_slots.py,
-- api/quotas.py). They read Redis' clock, not the caller's, so API processes
-- on machines with different clocks agree.

local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- What one key may keep stored, checked and charged in the step that stores a
-- submission (`job_create`, `batch_create`), so concurrent submissions cannot
-- all slip under a quota. `q` holds: the key's stored-bytes hash (hour ->
-- input bytes submitted in it), its open-batches set, window_s (how long
-- inputs are kept: hours older than that no longer count), bytes, max_bytes,
-- max_open, max_queued (0: no limit) and the key template of a batch hash.
-- Returns nil when the submission fits, else {quota, in use, limit}.
local function quota_refusal(q, items)
  local now = now_s()
  local oldest = math.floor((now - q.window_s) / 3600)
  local stored = 0
  local hours = redis.call('HGETALL', q.bytes_key)
  for i = 1, #hours, 2 do
    if tonumber(hours[i]) < oldest then
      redis.call('HDEL', q.bytes_key, hours[i])
    else
      stored = stored + tonumber(hours[i + 1])
    end
  end
  if q.max_bytes > 0 and stored + q.bytes > q.max_bytes then return {'stored_bytes', stored, q.max_bytes} end
  if items == nil then return nil end
  local open, queued = 0, 0
  for _, id in ipairs(redis.call('SMEMBERS', q.open_key)) do
    local b = redis.call('HMGET', string.format(q.batch_template, id), 'status', 'n_queued')
    if not b[1] or BATCH_TERMINAL[b[1]] then
      redis.call('SREM', q.open_key, id)
    else
      open = open + 1
      queued = queued + num(b[2])
    end
  end
  if q.max_open > 0 and open >= q.max_open then return {'open_batches', open, q.max_open} end
  if q.max_queued > 0 and queued + items > q.max_queued then return {'queued_items', queued, q.max_queued} end
  return nil
end

-- Charges a submission that fit: its bytes to this hour, its batch (if any) to the open set.
local function quota_charge(q, batch_id)
  local hour = math.floor(now_s() / 3600)
  redis.call('HINCRBY', q.bytes_key, hour, q.bytes)
  redis.call('EXPIRE', q.bytes_key, math.ceil(q.window_s) + 3600)
  if batch_id then
    redis.call('SADD', q.open_key, batch_id)
    redis.call('EXPIRE', q.open_key, math.ceil(q.window_s) + 3600)
  end
end

-- The quota block of a function's KEYS and ARGV: KEYS[k], KEYS[k + 1] (the
-- stored-bytes hash, the open-batches set); ARGV[a .. a + 5] (window_s,
-- bytes, max_bytes, max_open, max_queued, batch key template).
local function quota_args(keys, k, args, a)
  return {bytes_key = keys[k], open_key = keys[k + 1], window_s = tonumber(args[a]), bytes = tonumber(args[a + 1]),
    max_bytes = tonumber(args[a + 2]), max_open = tonumber(args[a + 3]), max_queued = tonumber(args[a + 4]),
    batch_template = args[a + 5]}
end

-- A token bucket per key. KEYS: the bucket hash. ARGV: refill rate per second,
-- capacity, cost. Returns "0" when admitted, else the seconds until `cost`
-- tokens are there.
redis.register_function('submission_take', function(keys, args)
  local now = now_s()
  local rate, burst, cost = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  local b = redis.call('HMGET', keys[1], 'tokens', 'ts')
  local tokens = tonumber(b[1]) or burst
  local ts = tonumber(b[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
  local wait = 0
  if tokens >= cost then
    tokens = tokens - cost
  else
    wait = (cost - tokens) / rate
  end
  redis.call('HSET', keys[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.6f', now))
  redis.call('EXPIRE', keys[1], math.ceil(burst / rate) + 1)
  return string.format('%.6f', wait)
end)

-- A slot among a key's open event streams. KEYS: the key's stream set (slot
-- token -> when its lease runs out). ARGV: limit, lease_s, slot token.
-- 1: taken; 0: the key has all its streams open.
redis.register_function('stream_slot_take', function(keys, args)
  local now = now_s()
  redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', now)
  if redis.call('ZCARD', keys[1]) >= tonumber(args[1]) then
    return 0
  end
  redis.call('ZADD', keys[1], now + tonumber(args[2]), args[3])
  redis.call('EXPIRE', keys[1], math.ceil(tonumber(args[2])) + 1)
  return 1
end)
