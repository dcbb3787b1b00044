"""Batch items: a bulk worker takes one only when the LM has a slot for it, in turn across keys and batches.

One loop per model in each process that serves the bulk queue: wait for a
bulk slot of the model's endpoint (interactive jobs always go first,
core/capacity.py), then pick the next item (core/lua/batches.lua: the next
owner's next batch, so a 10-item batch submitted behind a 100,000-item one
gets every other turn), start it and hand it to the job runner. Items
therefore wait in Redis, as inputs and counts, never by the thousand in a
queue or in a worker's threads, and the order they run in is decided at the
moment there is room for one more.
"""

import asyncio
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core import keys, scripts
from core.batches import item_fields
from core.capacity import endpoints
from core.settings import Settings
from worker.capacity import Capacity
from worker.job_runner import JobRunner
from worker.wakeups import Wakeups

log = logging.getLogger(__name__)

# Look for work at least this often when there was none (a retry coming due, a lost wake-up).
_IDLE_S = 1.0
# Batches looked at per pick before deciding there is nothing to run now.
_PROBES = 16


def wakeup_channels(settings: Settings) -> list[str]:
    """The channels the bulk loops wait on (for the process's `Wakeups`)."""
    return [keys.bulk_ready(endpoint.id) for endpoint, _ in endpoints(settings).values()]


class BulkLoop:
    def __init__(
        self,
        settings: Settings,
        client: aioredis.Redis,
        capacity: Capacity,
        runner: JobRunner,
        wakeups: Wakeups,
        model: str,
    ) -> None:
        self._settings = settings
        self._redis = client
        self._capacity = capacity
        self._runner = runner
        self._wakeups = wakeups
        self._model = model
        self._endpoint, _ = capacity.endpoint(model)

    async def run(self) -> None:
        owners = keys.bulk_owners(self._endpoint.id)
        ready = keys.bulk_ready(self._endpoint.id)
        while not self._runner.stopping:
            try:
                if not await self._redis.exists(owners):
                    await self._wakeups.wait(ready, _IDLE_S)
                    continue
                # While a job runs alone here, or waits to (worker/isolation.py), pick nothing that would wait.
                await self._runner.isolation.opened()
                slot = await self._capacity.acquire(self._model, "bulk", self._runner.first_call_estimate())
                try:
                    picked = await self._pick(owners)
                except BaseException:
                    await asyncio.shield(self._capacity.release(slot, "unused"))
                    raise
                if picked is None:
                    await self._capacity.release(slot, "unused")
                    await self._wakeups.wait(ready, _IDLE_S)
                    continue
                batch_id, item_id, index, raw_input, batch = picked
                fields = item_fields(batch_id, index, raw_input, batch) if raw_input else {}
                await self._runner.start_item(item_id, fields, keys.batch_retries(batch_id), slot)
            except RedisError as e:
                log.warning("bulk loop for %s could not reach Redis (%s); trying again", self._model, e)
                await asyncio.sleep(_IDLE_S)

    async def _pick(self, owners: str) -> tuple[str, str, int, str, dict[str, str]] | None:
        found = await scripts.acall(
            self._redis,
            "bulk_pick",
            [owners],
            [
                repr(time.time()),
                self._settings.job_lease_s,
                _PROBES,
                keys.bulk_batches(self._endpoint.id, "%s"),
                keys.batch("%s"),
            ],
        )
        if not found:
            return None
        batch_id, item_id, index, raw_input, *pairs = (str(v) for v in found)
        return batch_id, item_id, int(index), raw_input, dict(zip(pairs[::2], pairs[1::2], strict=True))
