-- LM capacity: slots per LM endpoint shared by every worker, interactive work
-- first, pauses every worker sees (core/capacity.py describes the policy).
--
-- KEYS of the capacity functions, per endpoint: the slots (holder -> unix
-- time its lease runs out), the interactive and the bulk waiters (holder ->
-- lease), the state hash (pause, breaker, counters), then the request and
-- token counters of the current and the previous minute.

local function purge(keys, now)
  redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', keys[2], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', keys[3], '-inf', now)
end

-- Requests (or tokens) in the last minute, by the sliding-window-counter
-- estimate: all of this minute's, and the share of last minute's that the
-- window still covers.
local function in_window(current, previous, elapsed)
  return num(redis.call('GET', current)) + num(redis.call('GET', previous)) * (1 - elapsed)
end

local function pause(state, now, pause_s, reason, backoff_base_s, backoff_max_s)
  local s = tonumber(pause_s)
  if not s then
    s = math.min(backoff_max_s, math.max(backoff_base_s, 2 * num(redis.call('HGET', state, 'backoff_s'))))
    redis.call('HSET', state, 'backoff_s', s)
  end
  local until_s = now + s
  if until_s > num(redis.call('HGET', state, 'paused_until')) then
    redis.call('HSET', state, 'paused_until', until_s, 'pause_reason', reason, 'probing', '1')
    redis.call('HINCRBY', state, 'n_pauses', 1)
  end
end

-- ARGV: now, holder, priority (interactive or bulk), lease expiry, limit,
-- bulk limit, requests per minute (0: none), tokens per minute (0: none),
-- tokens this call is estimated to spend, the share of the minute elapsed,
-- the counters' ttl_s. Returns {1} when the holder now has a slot; else {0,
-- reason, unix time worth retrying at (0: when a slot is released)}, and the
-- holder is registered as waiting.
redis.register_function('cap_acquire', function(keys, args)
  local now, holder, priority = tonumber(args[1]), args[2], args[3]
  purge(keys, now)
  local waiting = keys[3]
  if priority == 'interactive' then waiting = keys[2] end
  local function refuse(reason, retry_at)
    redis.call('ZADD', waiting, args[4], holder)
    return {0, reason, tostring(retry_at)}
  end
  local s = redis.call('HMGET', keys[4], 'paused_until', 'probing', 'pause_reason')
  if num(s[1]) > now then return refuse(s[3] or 'paused', s[1]) end
  local cap = tonumber(args[5])
  -- After a pause, one call at a time until one succeeds.
  if s[2] == '1' then cap = 1 end
  if priority ~= 'interactive' then
    if redis.call('ZCARD', keys[2]) > 0 then return refuse('interactive_first', 0) end
    cap = math.min(cap, tonumber(args[6]))
  end
  if redis.call('ZCARD', keys[1]) >= cap then return refuse('full', 0) end
  local elapsed, rpm, tpm, tokens = tonumber(args[10]), tonumber(args[7]), tonumber(args[8]), tonumber(args[9])
  if rpm > 0 and in_window(keys[5], keys[6], elapsed) + 1 > rpm then return refuse('requests_per_minute', now + 1) end
  if tpm > 0 and in_window(keys[7], keys[8], elapsed) + tokens > tpm then
    return refuse('tokens_per_minute', now + 1)
  end
  redis.call('ZADD', keys[1], args[4], holder)
  redis.call('ZREM', keys[2], holder)
  redis.call('ZREM', keys[3], holder)
  redis.call('INCR', keys[5])
  redis.call('EXPIRE', keys[5], args[11])
  redis.call('INCRBY', keys[7], tokens)
  redis.call('EXPIRE', keys[7], args[11])
  return {1}
end)

-- KEYS: as `cap_acquire` (the minute counters: the tokens counter of the
-- minute the call was charged to is KEYS[7]). ARGV: holder, now, outcome (ok,
-- failed, rate_limited, unused), tokens to add to the charge (negative: a
-- refund), the pause for rate_limited ('' to back off), consecutive failures
-- that pause the endpoint, backoff base and max (s), the wake-up channel.
-- Returns 1 if the holder had a slot.
redis.register_function('cap_release', function(keys, args)
  local now, outcome = tonumber(args[2]), args[3]
  local removed = redis.call('ZREM', keys[1], args[1])
  local correction = tonumber(args[4])
  if correction ~= 0 and redis.call('EXISTS', keys[7]) == 1 then
    if redis.call('INCRBY', keys[7], correction) < 0 then redis.call('SET', keys[7], 0, 'KEEPTTL') end
  end
  local backoff_base_s, backoff_max_s = tonumber(args[7]), tonumber(args[8])
  if outcome == 'ok' then
    redis.call('HDEL', keys[4], 'probing', 'failures', 'backoff_s')
  elseif outcome == 'failed' then
    redis.call('HINCRBY', keys[4], 'n_failures', 1)
    if redis.call('HINCRBY', keys[4], 'failures', 1) >= tonumber(args[6]) then
      redis.call('HSET', keys[4], 'failures', 0)
      pause(keys[4], now, '', 'failing', backoff_base_s, backoff_max_s)
    end
  elseif outcome == 'rate_limited' then
    redis.call('HINCRBY', keys[4], 'n_rate_limited', 1)
    pause(keys[4], now, args[5], 'rate_limited', backoff_base_s, backoff_max_s)
  end
  if redis.call('ZCARD', keys[2]) + redis.call('ZCARD', keys[3]) > 0 then
    redis.call('PUBLISH', args[9], '1')
  end
  return removed
end)

-- KEYS: as `cap_acquire`. ARGV: lease expiry, then (kind: s slot, w waiter,
-- holder) pairs. Renews what is still held; returns the slots that were not.
redis.register_function('cap_renew', function(keys, args)
  local lost = {}
  for i = 2, #args, 2 do
    if args[i] == 's' then
      if redis.call('ZADD', keys[1], 'XX', 'CH', args[1], args[i + 1]) == 0
        and not redis.call('ZSCORE', keys[1], args[i + 1]) then
        lost[#lost + 1] = args[i + 1]
      end
    else
      redis.call('ZADD', keys[2], 'XX', args[1], args[i + 1])
      redis.call('ZADD', keys[3], 'XX', args[1], args[i + 1])
    end
  end
  return lost
end)

-- KEYS: as `cap_acquire`. ARGV: holder. It no longer waits (it gave up).
redis.register_function('cap_forget', function(keys, args)
  redis.call('ZREM', keys[2], args[1])
  redis.call('ZREM', keys[3], args[1])
  return 1
end)
