-- What every submission checks and charges in the step that stores it
-- (`job_create`, `batch_create`): its Idempotency-Key claim and its key's
-- quotas (core/lua/limits.lua). So concurrent submissions with one key make
-- one job or batch, and cannot all slip under a quota.
--
-- A claim is a string, the hashed Idempotency-Key -> `<id> <body digest>`,
-- with a TTL (api/idempotency.py).

-- Admits a submission, or says why not. `claim_key` ('' for none), its value
-- and ttl_s, the key template of the record a claim points at (`%s` = id),
-- the quota block `q`, the batch's id and its item count (nil for a job).
-- Returns nil when admitted (the claim is set and the quotas charged); the
-- claim's value when its key already made a record that exists (a claim
-- whose record is gone is taken over); {quota, in use, limit} when over one.
local function admit_submission(claim_key, claim_value, claim_ttl_s, template, q, batch_id, items)
  if claim_key ~= '' then
    local claimed = redis.call('GET', claim_key)
    if claimed and redis.call('EXISTS', string.format(template, string.match(claimed, '^%S+'))) == 1 then
      return claimed
    end
  end
  local refused = quota_refusal(q, items)
  if refused then return refused end
  quota_charge(q, batch_id)
  if claim_key ~= '' then redis.call('SET', claim_key, claim_value, 'EX', claim_ttl_s) end
  return nil
end

-- The API stores an uploaded file (an OpenAI-compatible batch input file):
-- its record, its content and its place in its owner's listing, within the
-- key's stored-bytes quota. KEYS: file hash, content, the owner's files
-- index, every key's files index, then the quota block (`quota_args`).
-- ARGV: ttl_s, file id, created_at, the quota block (6 values), n, n
-- field/value pairs of the record, the content. Returns 1, or {quota, in
-- use, limit} when over it (nothing is stored).
redis.register_function('file_create', function(keys, args)
  local refused = admit_submission('', '', 0, '', quota_args(keys, 5, args, 4), nil, nil)
  if refused then return refused end
  local n = tonumber(args[10])
  redis.call('HSET', keys[1], unpack(args, 11, 10 + 2 * n))
  redis.call('SET', keys[2], args[11 + 2 * n], 'EX', args[1])
  redis.call('EXPIRE', keys[1], args[1])
  redis.call('ZADD', keys[3], args[3], args[2])
  redis.call('ZADD', keys[4], args[3], args[2])
  return 1
end)
