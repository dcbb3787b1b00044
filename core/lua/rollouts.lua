-- A program's rollout (core/rollouts.py): one hash, its JSON `doc` and a
-- revision `rev`. Whoever changes it (an operator's call, a worker's
-- automatic rollback) read it at some revision and writes only if nobody
-- changed it since: a rollback judged on one canary never undoes a promotion
-- or a new canary that came in between.

-- KEYS: the rollout hash. ARGV: the revision the writer read ('0' for none
-- yet), the new doc (JSON). Returns the new revision, or 0 when the rollout
-- changed since (nothing written).
redis.register_function('rollout_write', function(keys, args)
  local rev = tonumber(redis.call('HGET', keys[1], 'rev') or '0')
  if rev ~= tonumber(args[1]) then return 0 end
  redis.call('HSET', keys[1], 'doc', args[2], 'rev', rev + 1)
  return rev + 1
end)
