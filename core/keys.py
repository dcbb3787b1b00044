"""Every Redis key and channel name the service uses, in one place.

Celery's own keys (queues named in settings, `unacked*`, `_kombu.*`) live in
the same database; all of ours start with `dj:` so they never collide. A job's
keys share the hash tag `{<job id>}`, a batch's `{<batch id>}`, an LM endpoint's
`{<endpoint>}`. The job functions also touch shared keys (the lease and deadline
sets, the queued set, the metrics hashes), so those are not yet Cluster-ready
(docs/operations.md, "How far one Redis goes").
"""

PREFIX = "dj"


def job(job_id: str) -> str:
    """Hash: the job record, the one source of truth for a job's state."""
    return f"{PREFIX}:job:{{{job_id}}}"


def job_events(job_id: str) -> str:
    """Stream: the job's ordered event log, entry id `<seq>-0`."""
    return f"{PREFIX}:job:{{{job_id}}}:events"


def job_channel(job_id: str) -> str:
    """Pub/sub channel on which each event is published as it is appended."""
    return f"{PREFIX}:job:{{{job_id}}}:live"


def job_feedback(job_id: str) -> str:
    """List: the feedback given on a finished job (JSON entries, oldest first), expiring with the job
    (core/lua/feedback.lua)."""
    return f"{PREFIX}:job:{{{job_id}}}:feedback"


# Pub/sub channel: `<job id> <terminal event>` for every job that is not a batch
# item, as it finishes; each API process follows it to answer `?wait` (api/event_hub.py).
JOBS_DONE = f"{PREFIX}:jobs:done"


def queued(queue: str) -> str:
    """Sorted set: job id -> unix time it was (re)queued on `queue` (due time, for a delayed retry),
    until a worker starts it. How a job whose message was lost is found again (worker/reaper.py)."""
    return f"{PREFIX}:queued:{queue}"


# Sorted set: job id -> unix time the lease of the worker that claimed or
# started it runs out (the job hash's `lease` field holds that worker's token).
# A job in here whose lease has run out lost its worker; a reaper puts it back.
LEASES = f"{PREFIX}:running"

# Sorted set: job id -> unix time it expires unless a worker has started it
# by then (`expires_after_s`); the reaper expires those that stay queued.
DEADLINES = f"{PREFIX}:deadlines"

# Sorted set: batch id -> unix time its items not started by then expire; the
# reaper ends them (core/lua/batches.lua `batch_expire`).
BATCH_DEADLINES = f"{PREFIX}:batches:deadlines"

# Job hash field set once the job's outcome is in the metrics (worker/metrics.py).
COUNTED_FIELD = "metrics_counted"


def idempotency(key_digest: str) -> str:
    """String: `<job id> <request digest>` for an Idempotency-Key, with a TTL."""
    return f"{PREFIX}:idem:{key_digest}"


def batch(batch_id: str) -> str:
    """Hash: the batch record and its item counters (core/batches.py)."""
    return f"{PREFIX}:batch:{{{batch_id}}}"


def batch_inputs(batch_id: str) -> str:
    """List: the items' inputs (JSON, with `custom_id`), read as items are picked, until the batch ends."""
    return f"{PREFIX}:batch:{{{batch_id}}}:inputs"


def batch_retries(batch_id: str) -> str:
    """Sorted set: item id -> unix time it is due to run (again): retries, items whose worker was lost,
    items picked and not yet started (core/lua/batches.lua)."""
    return f"{PREFIX}:batch:{{{batch_id}}}:retry"


def batch_ended(batch_id: str) -> str:
    """Set: indexes of items a client cancelled before any worker picked them; a pick skips them and the
    batch's own end (cancel, deadline) does not count them again (core/lua/batches.lua)."""
    return f"{PREFIX}:batch:{{{batch_id}}}:ended"


# --- Bulk rotation, per LM endpoint (core/lua/batches.lua) ----------------------


def bulk_owners(endpoint: str) -> str:
    """List: the owners (API key owner ids; `-` for an open API) with batches for the endpoint, in turn."""
    return f"{PREFIX}:bulk:{{{endpoint}}}:owners"


def bulk_batches(endpoint: str, owner: str) -> str:
    """List: an owner's batches for the endpoint that have items left, in turn."""
    return f"{PREFIX}:bulk:{{{endpoint}}}:owner:{owner}"


def bulk_ready(endpoint: str) -> str:
    """Pub/sub channel: a batch for the endpoint has items again (new, or a retry)."""
    return f"{PREFIX}:bulk:{{{endpoint}}}:ready"


# --- LM capacity, per LM endpoint (core/capacity.py, core/lua/capacity.lua) ----------


def lm_slots(endpoint: str) -> str:
    """Sorted set: holder token -> unix time its lease runs out; one per LM call in flight."""
    return f"{PREFIX}:lm:{{{endpoint}}}:slots"


def lm_waiting(endpoint: str, priority: str) -> str:
    """Sorted set: holder token -> lease, for callers waiting for a slot (`interactive` or `bulk`)."""
    return f"{PREFIX}:lm:{{{endpoint}}}:waiting:{priority}"


def lm_state(endpoint: str) -> str:
    """Hash: the endpoint's pause (`paused_until`, `pause_reason`, `probing`), breaker and counters."""
    return f"{PREFIX}:lm:{{{endpoint}}}:state"


def lm_minute(endpoint: str, kind: str, minute: int) -> str:
    """String: requests (`kind` rpm) or tokens (tpm) charged in one minute (unix time // 60)."""
    return f"{PREFIX}:lm:{{{endpoint}}}:{kind}:{minute}"


def lm_freed(endpoint: str) -> str:
    """Pub/sub channel: a slot of the endpoint was released while someone waited."""
    return f"{PREFIX}:lm:{{{endpoint}}}:freed"


# Sorted set: worker name -> unix time of its last heartbeat.
WORKERS = f"{PREFIX}:workers"


def worker(name: str) -> str:
    """Hash: what a worker told us about itself (queues, pool, pid)."""
    return f"{PREFIX}:worker:{name}"


# Hash: program name -> how many times any worker process loaded it.
PROGRAM_LOADS = f"{PREFIX}:program_loads"


def program_interface(name: str) -> str:
    """Hash: version -> JSON `{"input": ..., "output": ..., "metadata": ...}` of a program a worker loaded
    from MLflow: the schemas of its signature, which the API validates and documents with (it cannot
    import the program). Written at each load of a version; a version's interface never changes."""
    return f"{PREFIX}:program:{name}:interface"


# List: feedback on jobs traced to MLflow, for the workers to log on the traces (worker/assessments.py): each
# `<JSON header: trace_id, job_id, program, attempts>\n<the entry's JSON>`, oldest first.
MLFLOW_ASSESSMENTS = f"{PREFIX}:mlflow:assessments"


# --- Program versions and rollouts (core/program_versions.py, core/rollouts.py) ----


def program_versions(name: str) -> str:
    """Hash: version -> JSON metadata of each version registered for an artifact program (how and when it was
    built, from what, its scores): what the API lists. The artifact program's file on disk is not in here."""
    return f"{PREFIX}:program:{{{name}}}:versions"


def program_artifacts(name: str) -> str:
    """Hash: version -> the whole artifact (JSON state and metadata) of each registered version, which workers
    load to serve it."""
    return f"{PREFIX}:program:{{{name}}}:artifacts"


def program_rollout(name: str) -> str:
    """Hash: `doc` (the program's rollout as JSON: stable and candidate versions, the candidate's share, its
    history) and `rev` (bumped at every change) (core/lua/rollouts.lua)."""
    return f"{PREFIX}:program:{{{name}}}:rollout"


def replay(replay_id: str) -> str:
    """Hash: a replay (api/replays.py): its program, the filter of past jobs, what they ran against, its batch
    (the replay's id is its batch's)."""
    return f"{PREFIX}:replay:{{{replay_id}}}"


# --- Security and operations ---------------------------------------------------


def rate_submit(bucket: str) -> str:
    """Hash: a key's submission token bucket (`tokens`, `ts`), with a TTL (api/submission_rate.py)."""
    return f"{PREFIX}:rate:submit:{bucket}"


def sse_streams(bucket: str) -> str:
    """Sorted set: a key's open event streams, slot token -> unix time its lease runs out."""
    return f"{PREFIX}:sse:{bucket}"


def quota_stored_bytes(bucket: str) -> str:
    """Hash: hour (unix time // 3600) -> input bytes a key submitted in it, for its stored-bytes quota."""
    return f"{PREFIX}:quota:{bucket}:bytes"


def quota_open_batches(bucket: str) -> str:
    """Set: a key's batches that had not ended when it last submitted one, for its open-batches quota."""
    return f"{PREFIX}:quota:{bucket}:batches"


def long_polls(bucket: str) -> str:
    """Sorted set: a key's requests waiting for a job to end (`?wait`), slot token -> lease end."""
    return f"{PREFIX}:waits:{bucket}"


# Sorted sets for listing (core/lua/indexes.lua): `<prefix><scope>:<jobs|batches>:<facet>`.
INDEX_PREFIX = f"{PREFIX}:idx:"
# The scope of operators' keys: every key's records.
EVERY_SCOPE = "*"


def index(scope: str, kind: str, facet: str) -> str:
    """Sorted set: ids of `kind` ('jobs', 'batches') in `scope` (an owner id, 'public', or every key's) with
    `facet` ('all', 'status:<s>', 'program:<p>', 'version:<p>@<v>', 'error:<type>', and for feedback
    'feedback:<p>', 'corrected:<p>', 'positive:<p>'), scored by creation time."""
    return f"{INDEX_PREFIX}{scope}:{kind}:{facet}"


def batch_items(batch_id: str, status: str) -> str:
    """Sorted set: the indexes of a batch's items with a record in `status`, scored by index."""
    return f"{batch(batch_id)}:items:{status}"


# --- OpenAI-compatible files and batches (api/openai_files.py, api/openai_batches.py) ----


def openai_file(file_id: str) -> str:
    """Hash: an uploaded or generated file's record (owner, filename, bytes, purpose, ...)."""
    return f"{PREFIX}:oai:file:{{{file_id}}}"


def openai_file_content(file_id: str) -> str:
    """String: a file's bytes."""
    return f"{PREFIX}:oai:file:{{{file_id}}}:content"


def openai_batch(batch_id: str) -> str:
    """Hash: an OpenAI-compatible batch: its input file, our batch that runs it, its files and times."""
    return f"{PREFIX}:oai:batch:{{{batch_id}}}"


def openai_listing(scope: str, kind: str) -> str:
    """Sorted set: a scope's files or batches (`kind`), by creation time."""
    return f"{PREFIX}:oai:{scope}:{kind}"


# Hash: worker-side counters for /metrics, field `[name, labels]` (JSON) -> value (core/metrics.py).
METRICS_COUNTERS = f"{PREFIX}:metrics:counters"
# Hash: worker-side histograms for /metrics, field `[name, labels, bucket index | "sum" | "count"]`.
METRICS_HISTOGRAMS = f"{PREFIX}:metrics:histograms"
# Sorted set: batch id -> created time, for batches /metrics has not yet seen finish.
OPEN_BATCHES = f"{PREFIX}:batches:open"

# Sorted set: webhook delivery (`job:<id>` or `batch:<id>`) -> unix time it is
# next due; a claimed one is due again when its attempt's lease runs out.
WEBHOOKS_DUE = f"{PREFIX}:webhooks:due"
WEBHOOK_PREFIX = f"{PREFIX}:webhook:"


def webhook(delivery: str) -> str:
    """Hash: one delivery: url, the record's key and owner, event type, end time, attempts, crashed attempts,
    whether its latest claim is open, the body once built (core/lua/webhooks.lua)."""
    return f"{WEBHOOK_PREFIX}{delivery}"


def job_function_keys(job_id: str, interactive_queue: str) -> list[str]:
    """The KEYS every job function of core/lua/jobs.lua takes, in order."""
    return [
        job(job_id),
        job_events(job_id),
        job_channel(job_id),
        LEASES,
        DEADLINES,
        queued(interactive_queue),
        METRICS_COUNTERS,
        METRICS_HISTOGRAMS,
    ]
