"""What one key may keep in Redis: input bytes, open batches, queued batch items.

Redis holds every tenant's work, and with `noeviction` a full Redis refuses
every write, other keys' results included. So each key (each API key; every
caller together on an open API) may have stored at most:

- `KEY_MAX_STORED_BYTES` of inputs submitted within `JOB_TTL_S` (inputs are
  kept that long; counted per hour, so old hours fall out of the window);
- `KEY_MAX_OPEN_BATCHES` batches that have not ended;
- `KEY_MAX_QUEUED_ITEMS` batch items not started yet, across its batches.

The check and the charge run in the Redis step that stores the submission
(`job_create`, `batch_create`; the quota block in core/lua/limits.lua), so
concurrent submissions cannot all slip under a quota. Over one: 429 naming
the quota and its figures; nothing is stored. Beyond the quotas, the API
refuses every submission while Redis is nearly full (api/redis_memory.py).
"""

from dataclasses import dataclass

from api.auth import Caller
from api.metrics import REQUESTS_REFUSED
from api.submission_rate import TooManyRequests
from core import keys, scripts
from core.settings import Settings

# Seconds a client is told to wait before submitting again: a quota frees up as its work ends, not at once.
RETRY_AFTER_S = 30.0


@dataclass(frozen=True)
class Quota:
    """The quota block of `job_create` and `batch_create`: two KEYS and six ARGV values."""

    keys: list[str]
    args: list[scripts.Arg]


def quota_for(settings: Settings, caller: Caller, input_bytes: int) -> Quota:
    return Quota(
        keys=[keys.quota_stored_bytes(caller.bucket), keys.quota_open_batches(caller.bucket)],
        args=[
            settings.job_ttl_s,
            input_bytes,
            settings.key_max_stored_bytes,
            settings.key_max_open_batches,
            settings.key_max_queued_items,
            keys.batch("%s"),
        ],
    )


_WHAT = {
    "stored_bytes": ("bytes of input stored", "KEY_MAX_STORED_BYTES", "as its inputs reach JOB_TTL_S"),
    "open_batches": ("open batches", "KEY_MAX_OPEN_BATCHES", "as its batches end (or cancel one)"),
    "queued_items": ("batch items waiting to start", "KEY_MAX_QUEUED_ITEMS", "as its batches' items start"),
}


def refused(refusal: list[object], input_bytes: int, items: int = 0) -> TooManyRequests:
    """The 429 for what a Redis function answered as `{quota, in use, limit}`, for a submission of
    `input_bytes` (and `items`, a batch's)."""
    quota, in_use, limit = str(refusal[0]), int(str(refusal[1])), int(str(refusal[2]))
    what, setting, frees = _WHAT[quota]
    wanted = {"stored_bytes": input_bytes, "open_batches": 1, "queued_items": items}[quota]
    REQUESTS_REFUSED.labels(f"quota_{quota}").inc()
    return TooManyRequests(
        f"this key is at its quota of {what}: {in_use} of {limit} ({setting}), and this submission needs "
        f"{wanted} more; it frees up {frees}",
        RETRY_AFTER_S,
    )
