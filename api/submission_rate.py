"""Submissions per key: a token bucket in Redis, so it holds across every API process.

`KEY_SUBMIT_RATE_PER_S` refills it, `KEY_SUBMIT_BURST` is its size. A batch
counts as one submission; its size has its own limit (`KEY_BATCH_MAX_ITEMS`).
Over the limit: 429 with `Retry-After`, nothing stored. The bucket is
`submission_take` in core/lua/limits.lua.
"""

import math

import redis.asyncio as aioredis
from fastapi import HTTPException

from api.auth import Caller
from api.metrics import REQUESTS_REFUSED
from core import keys, scripts
from core.settings import Settings


class TooManyRequests(HTTPException):
    def __init__(self, detail: str, retry_after_s: float) -> None:
        super().__init__(429, detail, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


async def check_submission(redis: aioredis.Redis, settings: Settings, caller: Caller) -> None:
    """Take one submission from the caller's bucket, or raise 429 saying when to retry."""
    rate = settings.key_submit_rate_per_s
    if rate <= 0:
        return
    burst = max(1, settings.key_submit_burst)
    bucket = [keys.rate_submit(caller.bucket)]
    wait_s = float(await scripts.acall(redis, "submission_take", bucket, [str(rate), str(burst), "1"]))
    if wait_s > 0:
        REQUESTS_REFUSED.labels("submission_rate").inc()
        raise TooManyRequests(
            f"too many submissions for this key: at most {rate:g} per second (bursts of {burst}); "
            f"retry in {wait_s:.1f} s",
            wait_s,
        )
