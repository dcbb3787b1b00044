-- Feedback on finished jobs (api/feedback.py): the entry kept on the job, the
-- job's latest score and whether any entry corrected it on its record, the
-- job in the listing indexes of jobs with feedback, and the per-version
-- counters of /metrics and GET /programs/{name}/feedback, in one step.
--
-- Facets (core/lua/indexes.lua), scored by the job's creation time:
-- 'feedback:<program>' (any feedback), 'corrected:<program>' (an entry with a
-- correction), 'positive:<program>' (its latest score is at least a half; a
-- later lower score takes it out).

-- A job traced to MLflow (its record names its `trace_id`) also gets its
-- entry queued for the workers, which log it on the trace as an assessment
-- (worker/assessments.py): the API never talks to MLflow.

-- KEYS: job hash, its feedback list, the metrics counters hash, the queue of
-- assessments to log (`keys.MLFLOW_ASSESSMENTS`). ARGV: the entry (JSON),
-- its score (0 to 1), '1' if it carries a correction, the job's owner (''
-- for none: a batch item's is its batch's, which the caller knows), the
-- most entries a job may hold, then the counter fields of entries, score sum
-- and corrections (core/metrics.py), then the longest the queue may grow
-- (its oldest are dropped past that: no worker traces, or MLflow is away).
-- Returns how many entries the job holds now, or NO_JOB, NOT_FINISHED,
-- FEEDBACK_FULL (nothing written).
redis.register_function('feedback_add', function(keys, args)
  local f = redis.call('HMGET', keys[1], 'status', 'id', 'program', 'created_at', 'trace_id')
  if not f[1] then return NO_JOB end
  if not TERMINAL[f[1]] then return NOT_FINISHED end
  if redis.call('LLEN', keys[2]) >= tonumber(args[5]) then return FEEDBACK_FULL end
  local n = redis.call('RPUSH', keys[2], args[1])
  local ttl = redis.call('PTTL', keys[1])
  if ttl > 0 then redis.call('PEXPIRE', keys[2], ttl) end
  local score, corrected, owner = tonumber(args[2]), args[3] == '1', args[4]
  redis.call('HSET', keys[1], 'feedback_n', n, 'feedback_score', args[2])
  index_add('jobs', owner, 'feedback:' .. f[3], f[4], f[2])
  if corrected then
    redis.call('HSET', keys[1], 'corrected', '1')
    index_add('jobs', owner, 'corrected:' .. f[3], f[4], f[2])
  end
  if score >= 0.5 then
    index_add('jobs', owner, 'positive:' .. f[3], f[4], f[2])
  else
    index_remove('jobs', owner, 'positive:' .. f[3], f[2])
  end
  redis.call('HINCRBY', keys[3], args[6], 1)
  redis.call('HINCRBYFLOAT', keys[3], args[7], args[2])
  if corrected then redis.call('HINCRBY', keys[3], args[8], 1) end
  if f[5] and f[5] ~= '' then
    redis.call('RPUSH', keys[4], cjson.encode({trace_id = f[5], job_id = f[2], program = f[3], attempts = 0})
      .. '\n' .. args[1])
    redis.call('LTRIM', keys[4], 0 - tonumber(args[9]), -1)
  end
  return n
end)
