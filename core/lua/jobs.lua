-- A job's life in Redis: created (API), claimed and started, renewed, ended,
-- retried, requeued when its worker is lost, cancelled (API).
--
-- Every function that runs on behalf of a worker carries that worker's lease
-- token and is refused (FENCED) once the token no longer holds the job: a worker
-- that was paused past its lease, whose job another worker has since taken,
-- cannot write a token, a result, a retry or a renewal for it.
--
-- Job functions take the same KEYS: job hash, event stream, channel, the lease
-- set (`keys.LEASES`: job id -> unix time its lease runs out), the deadline set
-- (`keys.DEADLINES`: job id -> unix time it expires if not started), the
-- interactive queue's queued set (`keys.queued`), the metrics counters and
-- histograms hashes; some add one more.

local function record(job)
  return redis.call('HGETALL', job)
end

-- Why the job may not be taken with `token` now, or nil when it may.
local function refusal(keys, job_id, now, token)
  local f = redis.call('HMGET', keys[1], 'status', 'lease', 'attempts', 'expires_at', 'batch_key')
  if not f[1] then return {NO_JOB, ''} end
  if TERMINAL[f[1]] then return {FINISHED, f[1]} end
  if f[2] and f[2] ~= '' and f[2] ~= token then
    local held = redis.call('ZSCORE', keys[4], job_id)
    if held and tonumber(held) > now then return {LEASED, f[1]} end
  end
  if f[5] and redis.call('HGET', f[5], 'cancel_requested') then return {BATCH_CANCELLED, record(keys[1])} end
  if f[1] == 'queued' and num(f[3]) == 0 and f[4] and f[4] ~= '' and tonumber(f[4]) <= now then
    return {EXPIRED, record(keys[1])}
  end
  return nil
end

-- Takes the job under `token` for a worker that waits before starting it:
-- its lease, and a `waiting` event saying why. Returns {0, record}.
local function claim(keys, job_id, now_text, expiry, token, worker, maxlen, ttl_s, waiting)
  redis.call('HSET', keys[1], 'lease', token, 'worker', worker)
  redis.call('HSETNX', keys[1], 'waiting_since', now_text)
  redis.call('ZADD', keys[4], expiry, job_id)
  append_event(keys[1], keys[2], keys[3], 'status', waiting, maxlen, ttl_s, {}, token)
  return {0, record(keys[1])}
end

-- Starts an attempt under `token`: counts it, takes the lease, writes the
-- `running` event that starts it. A job on its last delivery (it lost
-- `lone_from` of them) starts only `alone` ('1': nothing else runs in the
-- worker, worker/isolation.py); otherwise it is claimed with the `waiting`
-- event instead, and not started.
local function start(keys, job_id, now_text, expiry, token, worker, maxlen, ttl_s, alone, lone_from, waiting)
  local now = tonumber(now_text)
  local refused = refusal(keys, job_id, now, token)
  if refused then return refused end
  if alone ~= '1' and num(redis.call('HGET', keys[1], 'deliveries_lost')) >= tonumber(lone_from) then
    return claim(keys, job_id, now_text, expiry, token, worker, maxlen, ttl_s, waiting)
  end
  local attempts = redis.call('HINCRBY', keys[1], 'attempts', 1)
  local since = redis.call('HGET', keys[1], 'waiting_since')
  if since then
    redis.call('HINCRBYFLOAT', keys[1], 'capacity_wait_s', math.max(now - tonumber(since), 0))
    redis.call('HDEL', keys[1], 'waiting_since')
  end
  redis.call('HSET', keys[1], 'lease', token, 'worker', worker, 'started_at', tostring(now))
  redis.call('ZADD', keys[4], expiry, job_id)
  redis.call('ZREM', keys[5], job_id)
  local data = '{"status":"running","attempt":' .. attempts .. '}'
  append_event(keys[1], keys[2], keys[3], 'status', data, maxlen, ttl_s, {'status', 'running'}, token)
  return {attempts, record(keys[1])}
end

-- Back to waiting: a batch item into its batch's retry set, an interactive
-- job into its queued set. Returns 2 for an item, 1 for a job whose task the
-- caller sends again.
local function requeue(keys, job_id, due)
  local batch = redis.call('HGET', keys[1], 'batch_key')
  if batch then
    requeue_item(batch, job_id, due)
    return 2
  end
  redis.call('ZADD', keys[6], due, job_id)
  return 1
end

local function release(keys, job_id)
  redis.call('ZREM', keys[4], job_id)
  redis.call('HDEL', keys[1], 'lease')
end

-- KEYS: job hash, event stream, channel, the queue's list, the queue's queued
-- set, the deadline set, the Idempotency-Key's claim ('' for none), then the
-- quota block (`quota_args`). ARGV: ttl_s, maxlen, the `queued` event's data,
-- the task message, the task-sent event's channel ('' for none) and message,
-- now, job id, expires_at ('' for none), the claim's value (`<job id>
-- <digest>`), its ttl_s, the key template of a job hash (`%s` = job id), the
-- quota block (6 values), then the record's field/value pairs.
-- Returns 1 when created; the claim's value when its key already made a job
-- that exists (a claim whose job is gone is taken over), so one key never
-- creates two jobs; {quota, in use, limit} when over a quota. Nothing is
-- written unless it returns 1.
redis.register_function('job_create', function(keys, args)
  local refused = admit_submission(keys[7], args[10], args[11], args[12], quota_args(keys, 8, args, 13), nil, nil)
  if refused then return refused end
  redis.call('HSET', keys[1], unpack(args, 19))
  redis.call('EXPIRE', keys[1], args[1])
  job_indexed(keys[1], nil, 'queued', false)
  append_event(keys[1], keys[2], keys[3], 'status', args[3], args[2], args[1], {}, nil)
  redis.call('LPUSH', keys[4], args[4])
  if args[5] ~= '' then redis.call('PUBLISH', args[5], args[6]) end
  redis.call('ZADD', keys[5], args[7], args[8])
  if args[9] ~= '' then redis.call('ZADD', keys[6], args[9], args[8]) end
  return 1
end)

-- A worker has taken the job and must wait for LM capacity before starting it.
-- ARGV: job id, now, lease expiry, token, worker, maxlen, ttl_s, the `waiting`
-- event's data. Returns {0, record}, or {code, status or record} as `refusal`.
redis.register_function('job_claim', function(keys, args)
  local job_id = args[1]
  redis.call('ZREM', keys[6], job_id)
  local refused = refusal(keys, job_id, tonumber(args[2]), args[4])
  if refused then return refused end
  return claim(keys, job_id, args[2], args[3], args[4], args[5], args[6], args[7], args[8])
end)

-- ARGV: job id, now, lease expiry, token, worker, maxlen, ttl_s, alone,
-- lone from (lost deliveries), the `waiting` event's data (for a job on its
-- last delivery that is not alone). Returns {attempts, record}; {0, record}
-- when claimed instead (`start`); or {code, status or record} as `refusal`.
redis.register_function('job_start', function(keys, args)
  redis.call('ZREM', keys[6], args[1])
  return start(keys, args[1], args[2], args[3], args[4], args[5], args[6], args[7], args[8], args[9], args[10])
end)

-- A picked batch item: created if it has no record yet, then started.
-- KEYS: as every job function, then the batch's retry set. ARGV: as
-- `job_start`, then the `queued` event's data, then the record's field/value
-- pairs (used only if it has none; without them an item with no record is
-- refused as NO_JOB).
redis.register_function('item_start', function(keys, args)
  if redis.call('EXISTS', keys[1]) == 0 and #args >= 12 then
    redis.call('HSET', keys[1], unpack(args, 12))
    redis.call('EXPIRE', keys[1], args[7])
    append_event(keys[1], keys[2], keys[3], 'status', args[11], args[6], args[7], {}, nil)
  end
  redis.call('ZREM', keys[9], args[1])
  return start(keys, args[1], args[2], args[3], args[4], args[5], args[6], args[7], args[8], args[9], args[10])
end)

-- KEYS: the lease set, then the hash of every job below. ARGV: lease expiry,
-- then (job id, token) per job. Renews the leases the tokens still hold;
-- returns the ids of the others (taken over, or finished).
redis.register_function('job_renew', function(keys, args)
  local lost = {}
  for i = 2, #keys do
    local job_id, token = args[2 * i - 2], args[2 * i - 1]
    local f = redis.call('HMGET', keys[i], 'status', 'lease')
    if f[2] == token and f[1] and not TERMINAL[f[1]] then
      redis.call('ZADD', keys[1], 'XX', args[1], job_id)
    else
      lost[#lost + 1] = job_id
    end
  end
  return lost
end)

-- The job's last events and its final record fields, with its metrics.
-- ARGV: job id, token ('' for a writer that holds no lease: then a live lease
-- held by anyone refuses it), maxlen, ttl_s, require ('unstarted': only a job
-- that never started), n, n (event type, data) pairs (the last is the
-- terminal event), m, m field/value pairs written with the terminal event,
-- then (hash: c or h, field, op: i or f, amount) metrics increments to the end.
-- Returns the terminal event's sequence number, or the refusal of the first
-- event (nothing written; a lease the token held is released all the same).
local function end_job(keys, args)
  local job_id, token = args[1], args[2]
  local f = redis.call('HMGET', keys[1], 'status', 'lease', 'attempts')
  if args[5] == 'unstarted' and f[1] and not TERMINAL[f[1]] and (f[1] ~= 'queued' or num(f[3]) > 0) then
    return LEASED
  end
  if token == '' and f[2] and f[2] ~= '' then
    local held = redis.call('ZSCORE', keys[4], job_id)
    local t = redis.call('TIME')
    if held and tonumber(held) > tonumber(t[1]) then return LEASED end
  end
  local n = tonumber(args[6])
  local m = tonumber(args[7 + 2 * n])
  local fields_at = 8 + 2 * n
  local seq = 0
  for i = 1, n do
    local updates = {}
    if i == n then updates = {unpack(args, fields_at, fields_at + 2 * m - 1)} end
    seq = append_event(keys[1], keys[2], keys[3], args[5 + 2 * i], args[6 + 2 * i], args[3], args[4], updates, token)
    if seq < 0 then break end
  end
  if seq == FENCED then return seq end
  if seq > 0 or (token ~= '' and f[2] == token) then release(keys, job_id) end
  redis.call('ZREM', keys[5], job_id)
  redis.call('ZREM', keys[6], job_id)
  if seq < 0 then return seq end
  if redis.call('HSETNX', keys[1], '__COUNTED__', '1') == 1 then
    for i = fields_at + 2 * m, #args, 4 do
      local hash = keys[7]
      if args[i] == 'h' then hash = keys[8] end
      if args[i + 2] == 'f' then
        redis.call('HINCRBYFLOAT', hash, args[i + 1], args[i + 3])
      else
        redis.call('HINCRBY', hash, args[i + 1], args[i + 3])
      end
    end
  end
  return seq
end

redis.register_function('job_end', end_job)

-- The attempt failed and another will follow. ARGV: job id, due (unix time of
-- the next attempt), token, maxlen, ttl_s, the `retrying` event's data.
-- Returns 1 (the caller sends its task again, delayed until `due`), 2 (a batch
-- item, back in its batch's retry set), or what `append_event` refused with.
redis.register_function('job_retry', function(keys, args)
  local job_id, token = args[1], args[3]
  local seq = append_event(keys[1], keys[2], keys[3], 'status', args[6], args[4], args[5], {'status', 'queued'}, token)
  if seq == FINISHED and redis.call('HGET', keys[1], 'lease') == token then release(keys, job_id) end
  if seq < 0 then return seq end
  release(keys, job_id)
  return requeue(keys, job_id, args[2])
end)

-- A worker that claimed or started the job stopped renewing its lease (it
-- died, or stalled past it). A started attempt lost that way is a lost
-- delivery (`deliveries_lost`); a job claimed and still waiting for LM
-- capacity never ran, so losing it costs nothing. The loss that reaches
-- `max deliveries` ends the job here, failed as the caller prepared it, so it
-- is never delivered again.
-- ARGV: job id, now, maxlen, ttl_s, the `retrying` event's data, max
-- deliveries, the status and lease token the caller read the record with
-- (its record and count are those, or nothing is done), then, for a running
-- job, `job_end`'s ARGV that end it dead-lettered.
-- Returns 0 when there is nothing to do (lease alive, renewed, job finished
-- or changed since it was read; only one reaper wins), 3 when it ended
-- dead-lettered, else what `requeue` returns.
redis.register_function('job_requeue_lost', function(keys, args)
  local job_id, now = args[1], tonumber(args[2])
  local expiry = redis.call('ZSCORE', keys[4], job_id)
  if not expiry or tonumber(expiry) > now then return 0 end
  local f = redis.call('HMGET', keys[1], 'status', 'lease', 'deliveries_lost')
  if (f[1] or '') ~= args[7] or (f[2] or '') ~= args[8] then return 0 end
  local status = f[1]
  if status ~= 'running' and status ~= 'queued' then
    redis.call('ZREM', keys[4], job_id)
    return 0
  end
  if status == 'running' then
    local lost = num(f[3]) + 1
    if lost >= tonumber(args[6]) then
      end_job(keys, {unpack(args, 9)})
      return 3
    end
    redis.call('HSET', keys[1], 'deliveries_lost', lost)
    append_event(keys[1], keys[2], keys[3], 'status', args[5], args[3], args[4], {'status', 'queued'}, nil)
  end
  release(keys, job_id)
  return requeue(keys, job_id, args[2])
end)

-- A worker gives back a job it claimed and has not started (it is shutting
-- down). ARGV: job id, token, now. Returns what `requeue` returns, or 0.
redis.register_function('job_unclaim', function(keys, args)
  local f = redis.call('HMGET', keys[1], 'status', 'lease')
  if f[1] ~= 'queued' or f[2] ~= args[2] then return 0 end
  release(keys, args[1])
  return requeue(keys, args[1], args[3])
end)

-- The API cancels a job. ARGV: the terminal event's data (the cancelled
-- record), maxlen, ttl_s, m, m field/value pairs for the record, then the
-- field/value pairs to create the record with if it has none (a batch item no
-- worker has picked: cancelled now, it is never picked; refused as FINISHED
-- if its batch has already ended it). Returns the event's sequence number, or
-- what `append_event` refused with.
redis.register_function('job_cancel', function(keys, args)
  local m = tonumber(args[4])
  if redis.call('EXISTS', keys[1]) == 0 and #args > 4 + 2 * m then
    redis.call('HSET', keys[1], unpack(args, 5 + 2 * m))
    local f = redis.call('HMGET', keys[1], 'batch_key', 'index')
    if f[1] and not item_end_unpicked(f[1], tonumber(f[2]) or -1, args[3]) then
      redis.call('DEL', keys[1])
      return FINISHED
    end
    redis.call('EXPIRE', keys[1], args[3])
  end
  local seq = append_event(keys[1], keys[2], keys[3], 'error', args[1], args[2], args[3], {unpack(args, 5, 4 + 2 * m)},
    nil)
  if seq > 0 then
    redis.call('ZREM', keys[5], redis.call('HGET', keys[1], 'id'))
    redis.call('ZREM', keys[6], redis.call('HGET', keys[1], 'id'))
  end
  return seq
end)

-- The reaper sends again a job whose message a lost worker took (worker/reaper.py).
-- KEYS: the queue's queued set, job hash. ARGV: job id, its score as the
-- reaper saw it, now. Returns 1 when this caller is to send the task again
-- (only one reaper can: the score moves to now); 0 when another did, or the
-- job no longer waits for its message.
redis.register_function('job_resend_lost', function(keys, args)
  local score = redis.call('ZSCORE', keys[1], args[1])
  if not score or tonumber(score) ~= tonumber(args[2]) then return 0 end
  local f = redis.call('HMGET', keys[2], 'status', 'lease')
  if f[1] ~= 'queued' or (f[2] and f[2] ~= '') then
    redis.call('ZREM', keys[1], args[1])
    return 0
  end
  redis.call('ZADD', keys[1], args[3], args[1])
  return 1
end)
