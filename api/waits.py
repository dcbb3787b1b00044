"""Long polls: a request that waits for a job to end (`?wait`, a chat completion without streaming).

Each holds one of its key's long-poll slots while it waits
(`KEY_MAX_LONG_POLLS`, api/key_slots.py): a waiting request costs the API a
connection and a subscription for up to `WAIT_MAX_S`, so one key cannot
hold them all.
"""

import redis.asyncio as aioredis

from api import job_store
from api.auth import Caller
from api.event_hub import EventHub
from api.key_slots import KeySlots
from core.settings import Settings


class Waits:
    def __init__(self, redis: aioredis.Redis, hub: EventHub, settings: Settings) -> None:
        self._redis = redis
        self.hub = hub  # the process's event hub, which waits (and event streams) follow
        self.slots = KeySlots.long_polls(redis, settings)

    async def until_finished(self, caller: Caller, job_id: str, timeout_s: float) -> dict[str, str] | str | None:
        """`job_store.wait_until_finished`, holding one of the caller's long-poll slots (429 when it has none)."""
        async with self.slots.hold(caller, "wait"):
            return await job_store.wait_until_finished(self._redis, self.hub, job_id, timeout_s)
