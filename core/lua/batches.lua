-- Batches: their place in the bulk rotation and how bulk workers pick items from it.
--
-- Bulk workers do not take batch items from a queue in submission order:
-- each LM endpoint has a rotation of owners (API keys), each owner a rotation
-- of batches, and a bulk worker that has an LM slot takes the next item of
-- the next batch of the next owner (`bulk_pick`). A small batch submitted
-- behind a huge one gets every other turn, and so does a second key. An item
-- is created as a job only when it is picked; until then it is its input in
-- the batch's inputs list and a count in `n_queued`.
--
-- A batch hash knows its own rotation keys (`rotation_owners`,
-- `rotation_batches`, `rotation_owner`, `rotation_ready`), so scripts that put
-- an item back (a retry, a lost worker) can bring its batch back to the rotation.

local function ensure_in_rotation(batch)
  local r = redis.call('HMGET', batch, 'in_rotation', 'rotation_owners', 'rotation_batches', 'rotation_owner',
    'rotation_ready', 'id')
  if r[1] == '1' or not r[2] then return end
  redis.call('HSET', batch, 'in_rotation', '1')
  redis.call('RPUSH', r[3], r[6])
  if not redis.call('LPOS', r[2], r[4]) then redis.call('RPUSH', r[2], r[4]) end
  redis.call('PUBLISH', r[5], r[6])
end

local function leave_rotation(batch, batch_id, batches_list, owners, owner)
  redis.call('LREM', batches_list, 0, batch_id)
  redis.call('HSET', batch, 'in_rotation', '0')
  if redis.call('LLEN', batches_list) == 0 then redis.call('LREM', owners, 0, owner) end
end

-- An item of `batch` (not finished) to run again from `due` (unix time).
local function requeue_item(batch, job_id, due)
  redis.call('ZADD', redis.call('HGET', batch, 'retry_key'), due, job_id)
  ensure_in_rotation(batch)
end

-- Items no worker has picked of a batch that was cancelled or is past its
-- deadline end here, all at once: they have no record to write, only counts
-- (their status reads from `settled_from` and `settled_as`). Those among them
-- that already ended one by one (cancelled by a client: `item_end_unpicked`)
-- were counted then and are not counted again. Items waiting for a retry have
-- records, and end when they are picked. True if it settled any.
local function settle_unpicked(batch, now)
  local f = redis.call('HMGET', batch, 'total', 'cursor', 'cancel_requested', 'expires_at', 'ended_key')
  local total, cursor = num(f[1]), num(f[2])
  if cursor >= total then return false end
  local ending = nil
  if f[3] then
    ending = 'cancelled'
  elseif f[4] and f[4] ~= '' and tonumber(f[4]) <= now then
    ending = 'expired'
  end
  if not ending then return false end
  local already = 0
  if f[5] then
    already = redis.call('SCARD', f[5])
    redis.call('DEL', f[5])
  end
  redis.call('HSET', batch, 'cursor', total, 'settled_from', cursor, 'settled_as', ending)
  local settled = total - cursor - already
  if settled > 0 then
    batch_items_moved(batch, 'queued', ending, settled, nil)
  else
    batch_maybe_done(batch)
  end
  return true
end

-- Whether the item at `index` of `batch`, which has no record, may be given
-- one that ends it now (a client cancels it before any worker picked it).
-- Refused (false) when the batch already ended it (`settled_from`) or there
-- is no such item. An item the cursor has not reached is noted in the batch's
-- ended set (for `ttl_s`), so neither a pick nor `settle_unpicked` counts it again.
local function item_end_unpicked(batch, index, ttl_s)
  local f = redis.call('HMGET', batch, 'total', 'cursor', 'settled_from', 'ended_key')
  if not f[1] or index < 0 or index >= num(f[1]) then return false end
  if f[3] and index >= num(f[3]) then return false end
  if index >= num(f[2]) and f[4] then
    redis.call('SADD', f[4], index)
    redis.call('EXPIRE', f[4], ttl_s)
  end
  return true
end

-- The API stores a batch: its record, its items' inputs, its Idempotency-Key
-- claim and its turn in the bulk rotation, in one step. KEYS: batch hash,
-- inputs list, the claim ('' for none), the open batches set
-- (`keys.OPEN_BATCHES`), the batch deadlines set, then the quota block
-- (`quota_args`). ARGV: ttl_s, batch id, created_at, expires_at ('' for
-- none), the claim's value (`<batch id> <digest>`), its ttl_s, the key
-- template of a batch hash (`%s` = batch id), the quota block (6 values), n,
-- n field/value pairs of the record, then every item's input (JSON).
-- Returns 1 when stored; the claim's value when its key already made a batch
-- that exists (a claim whose batch is gone is taken over); {quota, in use,
-- limit} when over a quota. Nothing is written unless it returns 1.
redis.register_function('batch_create', function(keys, args)
  local first_input = 15 + 2 * tonumber(args[14])
  local refused = admit_submission(keys[3], args[5], args[6], args[7], quota_args(keys, 6, args, 8), args[2],
    #args - first_input + 1)
  if refused then return refused end
  redis.call('HSET', keys[1], unpack(args, 15, first_input - 1))
  redis.call('EXPIRE', keys[1], args[1])
  for i = first_input, #args, 1000 do
    redis.call('RPUSH', keys[2], unpack(args, i, math.min(i + 999, #args)))
  end
  if #args >= first_input then redis.call('EXPIRE', keys[2], args[1]) end
  redis.call('ZADD', keys[4], args[3], args[2])
  if args[4] ~= '' then redis.call('ZADD', keys[5], args[4], args[2]) end
  batch_indexed(keys[1], nil, 'queued')
  ensure_in_rotation(keys[1])
  return 1
end)

-- The next item `batch` can run, or nil. Items waiting for a retry are
-- returned one by one even of a batch that was cancelled, and the job script
-- then cancels (or runs) each.
local function pick_from(batch, batch_id, batches_list, owners, owner, now, pick_lease_s)
  local f = redis.call('HMGET', batch, 'status', 'total', 'cursor', 'cancel_requested', 'expires_at', 'retry_key',
    'inputs_key', 'program', 'model', 'temperature', 'stream', 'created_at', 'pin_version', 'rollout_key')
  if not f[1] or BATCH_TERMINAL[f[1]] then
    leave_rotation(batch, batch_id, batches_list, owners, owner)
    return nil
  end
  local total, cursor = num(f[2]), num(f[3])
  if settle_unpicked(batch, now) then cursor = total end
  local item, index = nil, nil
  local due = redis.call('ZRANGEBYSCORE', f[6], '-inf', now, 'LIMIT', 0, 1)
  if due[1] then
    item = due[1]
    index = tonumber(string.match(item, '%-(%d+)$'))
  else
    -- Past the items a client already ended before any worker picked them.
    local ended, from = redis.call('HGET', batch, 'ended_key'), cursor
    while cursor < total and ended and redis.call('SREM', ended, cursor) == 1 do cursor = cursor + 1 end
    if cursor < total then
      index = cursor
      item = batch_id .. '-' .. cursor
      cursor = cursor + 1
    end
    if cursor ~= from then redis.call('HSET', batch, 'cursor', cursor) end
  end
  if not item then
    if cursor >= total and redis.call('ZCARD', f[6]) == 0 then
      leave_rotation(batch, batch_id, batches_list, owners, owner)
    end
    return nil
  end
  -- Picked, not yet started: picked again after the lease if its start never comes.
  redis.call('ZADD', f[6], now + pick_lease_s, item)
  local input = redis.call('LINDEX', f[7], index) or ''
  return {batch_id, item, tostring(index), input, 'program', f[8] or '', 'model', f[9] or '', 'temperature',
    f[10] or '', 'stream', f[11] or '0', 'expires_at', f[5] or '', 'created_at', f[12] or '0', 'pin_version',
    f[13] or '', 'rollout_key', f[14] or ''}
end

-- KEYS: the endpoint's owners list. ARGV: now, pick lease (s), how many
-- batches to look at before giving up, the key template of an owner's batches
-- list (`%s` = owner), the key template of a batch hash (`%s` = batch id).
-- Returns {} when nothing can run now, else {batch id, item id, index, input
-- JSON, then the batch's fields an item's record is made from, as field/value
-- pairs}.
redis.register_function('bulk_pick', function(keys, args)
  local owners = keys[1]
  local now, pick_lease_s, probes = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  for _ = 1, probes do
    local owner = redis.call('RPOPLPUSH', owners, owners)
    if not owner then return {} end
    local batches_list = string.format(args[4], owner)
    local batch_id = redis.call('RPOPLPUSH', batches_list, batches_list)
    if not batch_id then
      redis.call('LREM', owners, 0, owner)
    else
      local picked = pick_from(string.format(args[5], batch_id), batch_id, batches_list, owners, owner, now,
        pick_lease_s)
      if picked then return picked end
    end
  end
  return {}
end)

-- KEYS: batch hash. ARGV: now. The API cancels a batch: items not started
-- never run; running ones finish. Returns 0 if the batch had already ended.
redis.register_function('batch_cancel', function(keys, args)
  local status = redis.call('HGET', keys[1], 'status')
  if not status or BATCH_TERMINAL[status] then return 0 end
  redis.call('HSET', keys[1], 'cancel_requested', '1', 'status', 'cancelling')
  batch_indexed(keys[1], status, 'cancelling')
  redis.call('HINCRBY', keys[1], 'version', 1)
  settle_unpicked(keys[1], tonumber(args[1]))
  batch_maybe_done(keys[1])
  return 1
end)

-- KEYS: batch hash. ARGV: now. The reaper ends the items of a batch past its
-- deadline that no worker has picked. Returns 1 if it ended any.
redis.register_function('batch_expire', function(keys, args)
  local status = redis.call('HGET', keys[1], 'status')
  if not status or BATCH_TERMINAL[status] then return 0 end
  if settle_unpicked(keys[1], tonumber(args[1])) then return 1 end
  return 0
end)
