-- Per-key limits of the API (api/submission_rate.py, api/stream_slots.py).
-- Both read Redis' clock, not the caller's, so API processes on machines with
-- different clocks agree.

-- A token bucket per key. KEYS: the bucket hash. ARGV: refill rate per second,
-- capacity, cost. Returns "0" when admitted, else the seconds until `cost`
-- tokens are there.
redis.register_function('submission_take', function(keys, args)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
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
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', now)
  if redis.call('ZCARD', keys[1]) >= tonumber(args[1]) then
    return 0
  end
  redis.call('ZADD', keys[1], now + tonumber(args[2]), args[3])
  redis.call('EXPIRE', keys[1], math.ceil(tonumber(args[2])) + 1)
  return 1
end)
