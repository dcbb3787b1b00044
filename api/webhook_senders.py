"""How each online worker's webhook sender is doing, from its heartbeat (worker/webhooks.py): for /ready and
/metrics.

`ok`: its loop went round within WORKER_OFFLINE_AFTER_S; `stalled`: not
(a worker whose sender is stuck still runs jobs, but its deliveries wait for
another worker); `off`: it runs none (no WEBHOOK_SECRET).
"""

import time
from typing import Any, cast

import redis.asyncio as aioredis

from core import keys
from core.settings import Settings
from core.webhooks import SENDER_RESTARTS, SENDER_WENT_ROUND_AT


async def sender_states(redis: aioredis.Redis, settings: Settings, workers: list[str]) -> dict[str, dict[str, Any]]:
    """Per worker: `status` (`ok`, `stalled`, `off`) and, for those that run one, `restarts`."""
    async with redis.pipeline(transaction=False) as pipe:
        for name in workers:
            pipe.hmget(keys.worker(name), [SENDER_WENT_ROUND_AT, SENDER_RESTARTS])
        found = cast(list[list[str | None]], await pipe.execute())
    since = time.time() - settings.worker_offline_after_s
    states: dict[str, dict[str, Any]] = {}
    for name, (went_round_at, restarts) in zip(workers, found, strict=True):
        if went_round_at is None:
            states[name] = {"status": "off"}
        else:
            status = "ok" if float(went_round_at) >= since else "stalled"
            states[name] = {"status": status, "restarts": int(restarts or 0)}
    return states
