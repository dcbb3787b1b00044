-- Indexes for listing (GET /jobs and GET /batches, api/listing.py): sorted
-- sets of ids, kept in the same step that changes a status, so a listing
-- reads indexes, never every record.
--
-- Jobs (not batch items) and batches: per owner scope (the key's owner id,
-- or 'public' on an open API) and '*' (every key's, for operators' keys), a
-- set per facet: 'all', 'status:<status>', 'program:<program>',
-- 'version:<program>@<version>' (once served), 'error:<type>' (failed
-- jobs), each scored by creation time. Entries of records past their TTL
-- are trimmed by the reaper (worker/reaper.py).
--
-- Batch items: per batch, a set per status an item with a record is in
-- (`<batch key>:items:<status>`), scored by the item's index, expiring with
-- the batch. Items no worker has picked have no record: they are counted in
-- the batch and described from it (core/batches.py).

local function index_scopes(owner)
  if owner and owner ~= '' then return {owner, '*'} end
  return {'public', '*'}
end

local function index_key(scope, kind, facet)
  return '__INDEX_PREFIX__' .. scope .. ':' .. kind .. ':' .. facet
end

local function index_add(kind, owner, facet, score, id)
  for _, scope in ipairs(index_scopes(owner)) do redis.call('ZADD', index_key(scope, kind, facet), score, id) end
end

local function index_remove(kind, owner, facet, id)
  for _, scope in ipairs(index_scopes(owner)) do redis.call('ZREM', index_key(scope, kind, facet), id) end
end

-- A job that is not a batch item moved from status `from` (nil: just
-- created) to `to`; `terminal`: whether `to` ends it.
local function job_indexed(job, from, to, terminal)
  local f = redis.call('HMGET', job, 'id', 'owner', 'created_at', 'program', 'error', 'program_version')
  local id, owner, created = f[1], f[2], f[3]
  if not from then
    index_add('jobs', owner, 'all', created, id)
    index_add('jobs', owner, 'program:' .. f[4], created, id)
  else
    index_remove('jobs', owner, 'status:' .. from, id)
  end
  index_add('jobs', owner, 'status:' .. to, created, id)
  if to == 'failed' and f[5] then
    local ok, err = pcall(cjson.decode, f[5])
    if ok and type(err) == 'table' and err['type'] then index_add('jobs', owner, 'error:' .. err['type'], created, id) end
  end
  if terminal and f[6] and f[6] ~= '' then index_add('jobs', owner, 'version:' .. f[4] .. '@' .. f[6], created, id) end
end

-- A batch item moved from status `from` to `to`; its batch expires in `ttl_s`.
local function item_indexed(job, batch, from, to, ttl_s)
  local index = redis.call('HGET', job, 'index')
  redis.call('ZREM', batch .. ':items:' .. from, index)
  redis.call('ZADD', batch .. ':items:' .. to, index, index)
  redis.call('EXPIRE', batch .. ':items:' .. to, ttl_s)
end

-- A batch moved from status `from` (nil: just created) to `to`.
local function batch_indexed(batch, from, to)
  local f = redis.call('HMGET', batch, 'id', 'owner', 'created_at', 'program')
  if not from then
    index_add('batches', f[2], 'all', f[3], f[1])
    index_add('batches', f[2], 'program:' .. f[4], f[3], f[1])
  else
    index_remove('batches', f[2], 'status:' .. from, f[1])
  end
  index_add('batches', f[2], 'status:' .. to, f[3], f[1])
end

-- A page of a listing, newest first. KEYS: the index to walk, then every
-- other index an id must be in (the other filters). ARGV: the highest score
-- to start from ('+inf', or the cursor's score), the cursor's id ('' for
-- none: ids at that score below it come next), the lowest score ('-inf', or
-- the created-after bound), how many ids at most, how many entries of the
-- walked index to look at at most (a listing whose filters match little
-- answers a short page with a cursor rather than walking everything).
-- Returns {ids, next cursor as '<score> <id>', or '' after the last entry}.
redis.register_function('index_page', function(keys, args)
  local top, cursor_id, bottom = args[1], args[2], args[3]
  local limit, cap = tonumber(args[4]), tonumber(args[5])
  local top_score = tonumber(top)
  local found, scanned, offset, last = {}, 0, 0, ''
  while true do
    local entries = redis.call('ZREVRANGEBYSCORE', keys[1], top, bottom, 'WITHSCORES', 'LIMIT', offset, 100)
    if #entries == 0 then return {found, ''} end
    offset = offset + #entries / 2
    for i = 1, #entries, 2 do
      local id, score = entries[i], entries[i + 1]
      if not (cursor_id ~= '' and tonumber(score) == top_score and id >= cursor_id) then
        scanned = scanned + 1
        last = score .. ' ' .. id
        local wanted = true
        for k = 2, #keys do
          if not redis.call('ZSCORE', keys[k], id) then
            wanted = false
            break
          end
        end
        if wanted then found[#found + 1] = id end
        if #found >= limit or scanned >= cap then return {found, last} end
      end
    end
  end
end)
