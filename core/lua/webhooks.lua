-- Completion webhooks (core/webhooks.py): a delivery is queued in the same
-- step as the terminal event or batch end that calls for it, so nothing that
-- ended can miss its webhook, then claimed and reported by the workers'
-- senders (worker/webhooks.py).
--
-- A delivery is a hash (`keys.webhook`: url, the record's key, event type,
-- end time, attempts, the body once built) and a member of the due set
-- (`keys.WEBHOOKS_DUE`, score: unix time it is next due). A claim moves the
-- score to the end of the attempt's lease, so a sender that dies mid-attempt
-- leaves the delivery due again: deliveries are at least once.

-- Queues the webhook of a record that just ended as `status`, if it has a
-- receiver. `kind`: 'job' or 'batch'.
local function webhook_enqueue(record, kind, status)
  local f = redis.call('HMGET', record, 'webhook_url', 'id')
  if not f[1] or f[1] == '' then return end
  local delivery = kind .. ':' .. f[2]
  local t = redis.call('TIME')
  local now = t[1] .. '.' .. string.format('%06d', t[2])
  redis.call('HSET', '__WEBHOOK_PREFIX__' .. delivery, 'url', f[1], 'record', record, 'kind', kind, 'type',
    kind .. '.' .. status, 'ended_at', now, 'attempts', 0)
  redis.call('ZADD', '__WEBHOOKS_DUE__', now, delivery)
end

-- KEYS: the due set. ARGV: now, the claim's lease end, at most how many.
-- Returns {delivery, attempts, field/value list} per claimed delivery; each
-- claim counts as an attempt, on the delivery and on its record.
redis.register_function('webhook_claim', function(keys, args)
  local claimed = {}
  for _, delivery in ipairs(redis.call('ZRANGE', keys[1], '-inf', args[1], 'BYSCORE', 'LIMIT', 0, args[3])) do
    local hash = '__WEBHOOK_PREFIX__' .. delivery
    if redis.call('EXISTS', hash) == 0 then
      redis.call('ZREM', keys[1], delivery)
    else
      local attempts = redis.call('HINCRBY', hash, 'attempts', 1)
      redis.call('ZADD', keys[1], args[2], delivery)
      local record = redis.call('HGET', hash, 'record')
      if redis.call('EXISTS', record) == 1 then redis.call('HSET', record, 'webhook_attempts', attempts) end
      claimed[#claimed + 1] = {delivery, attempts, redis.call('HGETALL', hash)}
    end
  end
  return claimed
end)

-- An attempt's outcome. KEYS: the due set, the metrics counters hash. ARGV:
-- delivery, the attempt it reports, outcome ('delivered', 'retrying' or
-- 'failed'), when it is due next (retrying), the answer's status code ('' for
-- none), the error ('' for none), the counter field to add 1 to. A report of
-- an attempt that is not the delivery's latest (its lease ran out and
-- another sender took it) changes nothing. Returns 1 if it was taken.
redis.register_function('webhook_report', function(keys, args)
  local delivery, outcome = args[1], args[3]
  local hash = '__WEBHOOK_PREFIX__' .. delivery
  if redis.call('HGET', hash, 'attempts') ~= args[2] then return 0 end
  local record = redis.call('HGET', hash, 'record')
  local status = 'pending'
  if outcome ~= 'retrying' then status = outcome end
  if redis.call('EXISTS', record) == 1 then
    redis.call('HSET', record, 'webhook_status', status, 'webhook_code', args[5], 'webhook_error', args[6])
  end
  if outcome == 'retrying' then
    redis.call('ZADD', keys[1], args[4], delivery)
  else
    redis.call('ZREM', keys[1], delivery)
    redis.call('DEL', hash)
  end
  redis.call('HINCRBY', keys[2], args[7], 1)
  return 1
end)

-- Keeps the first body built for a delivery, so every attempt sends (and
-- signs) the same bytes. ARGV: delivery, body. Returns the body to send, or
-- false when the delivery is gone (another sender finished it).
redis.register_function('webhook_body', function(keys, args)
  local hash = '__WEBHOOK_PREFIX__' .. args[1]
  if redis.call('EXISTS', hash) == 0 then return false end
  redis.call('HSETNX', hash, 'body', args[2])
  return redis.call('HGET', hash, 'body')
end)

-- A claimed delivery the sender puts off without attempting it (its receiver
-- already has as many attempts in flight as one receiver may): not counted
-- as an attempt. KEYS: the due set. ARGV: delivery, the claimed attempt, when
-- it is due again. Returns 1 if it was put off.
redis.register_function('webhook_defer', function(keys, args)
  local hash = '__WEBHOOK_PREFIX__' .. args[1]
  if redis.call('HGET', hash, 'attempts') ~= args[2] then return 0 end
  local attempts = redis.call('HINCRBY', hash, 'attempts', -1)
  local record = redis.call('HGET', hash, 'record')
  if redis.call('EXISTS', record) == 1 then redis.call('HSET', record, 'webhook_attempts', attempts) end
  redis.call('ZADD', keys[1], args[3], args[1])
  return 1
end)
