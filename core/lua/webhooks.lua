-- Completion webhooks (core/webhooks.py): a delivery is queued in the same
-- step as the terminal event or batch end that calls for it, so nothing that
-- ended can miss its webhook, then claimed and reported by the workers'
-- senders (worker/webhooks.py).
--
-- A delivery is a hash (`keys.webhook`: url, the record's key, its owner,
-- event type, end time, attempts, crashed attempts, whether the latest claim
-- is still open, the body once built) and a member of the due set
-- (`keys.WEBHOOKS_DUE`, score: unix time it is next due). A claim moves the
-- score to the end of the attempt's lease, so a sender that dies mid-attempt
-- leaves the delivery due again: deliveries are at least once. Every
-- delivery ends, delivered or failed, by the end of its retry window.

-- Queues the webhook of a record that just ended as `status`, if it has a
-- receiver. `kind`: 'job' or 'batch'. The delivery keeps the record's owner
-- (senders share their slots per key) and never outlives the record; its
-- first claim shortens that to its retry window.
local function webhook_enqueue(record, kind, status)
  local f = redis.call('HMGET', record, 'webhook_url', 'id', 'owner')
  if not f[1] or f[1] == '' then return end
  local delivery = kind .. ':' .. f[2]
  local hash = '__WEBHOOK_PREFIX__' .. delivery
  local t = redis.call('TIME')
  local now = t[1] .. '.' .. string.format('%06d', t[2])
  redis.call('HSET', hash, 'url', f[1], 'record', record, 'kind', kind, 'type', kind .. '.' .. status,
    'ended_at', now, 'attempts', 0, 'owner', f[3] or '')
  local ttl = redis.call('TTL', record)
  if ttl > 0 then redis.call('EXPIRE', hash, ttl) end
  redis.call('ZADD', '__WEBHOOKS_DUE__', now, delivery)
end

-- Ends a delivery: its record shows `status` ('delivered' or 'failed') with
-- the last answer's code and error, and the delivery is gone.
local function webhook_end(due, delivery, status, code, err)
  local hash = '__WEBHOOK_PREFIX__' .. delivery
  local record = redis.call('HGET', hash, 'record')
  if record and redis.call('EXISTS', record) == 1 then
    redis.call('HSET', record, 'webhook_status', status, 'webhook_code', code, 'webhook_error', err)
  end
  redis.call('ZREM', due, delivery)
  redis.call('DEL', hash)
end

-- KEYS: the due set, the metrics counters hash. ARGV: now, the claim's lease
-- end, at most how many, the retry window (s), how many crashed attempts end
-- a delivery, how long a delivery's hash outlives its window (s), the counter
-- field to add 1 to per delivery ended here.
-- Returns {delivery, attempts, field/value list} per claimed delivery; each
-- claim counts as an attempt, on the delivery and on its record, and stays
-- open until its report. A claim still open at the next claim crashed (its
-- sender raised before reporting, or its worker died). A due delivery past
-- its window, with no readable end time, or with that many crashed attempts
-- is not claimed: it ends `failed` here, whatever its senders do.
redis.register_function('webhook_claim', function(keys, args)
  local now, window_s, crashes_max = tonumber(args[1]), tonumber(args[4]), tonumber(args[5])
  local claimed = {}
  for _, delivery in ipairs(redis.call('ZRANGE', keys[1], '-inf', args[1], 'BYSCORE', 'LIMIT', 0, args[3])) do
    local hash = '__WEBHOOK_PREFIX__' .. delivery
    if redis.call('EXISTS', hash) == 0 then
      redis.call('ZREM', keys[1], delivery)
    else
      local f = redis.call('HMGET', hash, 'ended_at', 'open', 'crashes', 'record')
      local ended_at, crashes = tonumber(f[1]), tonumber(f[3]) or 0
      if f[2] then
        crashes = crashes + 1
        redis.call('HSET', hash, 'crashes', crashes)
      end
      local why = nil
      if not ended_at then
        why = 'gave up: the delivery has no end time'
      elseif now > ended_at + window_s then
        why = 'gave up: the retry window ended'
      elseif crashes >= crashes_max then
        why = 'gave up: ' .. crashes .. ' attempts crashed (the sender failed, or its worker died, mid-attempt)'
      end
      if why then
        webhook_end(keys[1], delivery, 'failed', '', why)
        redis.call('HINCRBY', keys[2], args[7], 1)
      else
        local attempts = redis.call('HINCRBY', hash, 'attempts', 1)
        redis.call('HSET', hash, 'open', 1)
        redis.call('EXPIRE', hash, math.ceil(ended_at + window_s + tonumber(args[6]) - now))
        redis.call('ZADD', keys[1], args[2], delivery)
        if f[4] and redis.call('EXISTS', f[4]) == 1 then redis.call('HSET', f[4], 'webhook_attempts', attempts) end
        claimed[#claimed + 1] = {delivery, attempts, redis.call('HGETALL', hash)}
      end
    end
  end
  return claimed
end)

-- An attempt's outcome. KEYS: the due set, the metrics counters hash. ARGV:
-- delivery, the attempt it reports, outcome ('delivered', 'retrying' or
-- 'failed'), when it is due next (retrying), the answer's status code ('' for
-- none), the error ('' for none), the counter field to add 1 to, '1' if the
-- attempt crashed (the sender raised) else '0'. A report of an attempt that
-- is not the delivery's latest (its lease ran out and another sender took
-- it) changes nothing. Returns 1 if it was taken.
redis.register_function('webhook_report', function(keys, args)
  local delivery, outcome = args[1], args[3]
  local hash = '__WEBHOOK_PREFIX__' .. delivery
  if redis.call('HGET', hash, 'attempts') ~= args[2] then return 0 end
  redis.call('HDEL', hash, 'open')
  if args[8] == '1' then redis.call('HINCRBY', hash, 'crashes', 1) end
  if outcome == 'retrying' then
    local record = redis.call('HGET', hash, 'record')
    if record and redis.call('EXISTS', record) == 1 then
      redis.call('HSET', record, 'webhook_status', 'pending', 'webhook_code', args[5], 'webhook_error', args[6])
    end
    redis.call('ZADD', keys[1], args[4], delivery)
  else
    webhook_end(keys[1], delivery, outcome, args[5], args[6])
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
  redis.call('HDEL', hash, 'open')
  local attempts = redis.call('HINCRBY', hash, 'attempts', -1)
  local record = redis.call('HGET', hash, 'record')
  if record and redis.call('EXISTS', record) == 1 then redis.call('HSET', record, 'webhook_attempts', attempts) end
  redis.call('ZADD', keys[1], args[3], args[1])
  return 1
end)
