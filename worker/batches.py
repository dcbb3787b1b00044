"""Turning a stored batch into jobs on the bulk queue, a chunk at a time.

The API stores a batch's inputs in one list and answers at once; this task
(on the bulk queue) walks the list in chunks: it creates each item's job
record (only if it does not exist yet, so a redelivered expansion resumes
without resetting items that already ran), then publishes the chunk's task
messages through one pipelined producer batch (kombu's `Producer.batch`), and
records how far it got in the batch's `expanded` field. No chord, no result
sets, no round trip per message.

A cancel request stops the expansion at the next chunk; the items never
expanded are counted as cancelled in one step.
"""

import json
import logging
import time
from typing import Any

import redis
from celery import Celery

from core import keys
from core.batches import item_id
from core.events import APPEND_EVENT_LUA, EventType, append_event_args
from core.jobs import JobStatus, new_job_fields
from core.queue import RUN_JOB_TASK
from core.settings import Settings

log = logging.getLogger(__name__)

# KEYS: job hash. ARGV: ttl_s, then field/value pairs. Creates the job only if absent.
CREATE_ITEM_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: batch hash. ARGV: number of items that will never be expanded.
CANCEL_UNEXPANDED_LUA = """
local n = tonumber(ARGV[1])
redis.call('HINCRBY', KEYS[1], 'n_queued', -n)
redis.call('HINCRBY', KEYS[1], 'n_cancelled', n)
redis.call('HINCRBY', KEYS[1], 'version', 1)
local b = redis.call('HMGET', KEYS[1], 'total', 'n_succeeded', 'n_failed', 'n_cancelled')
if tonumber(b[2]) + tonumber(b[3]) + tonumber(b[4]) >= tonumber(b[1]) then
  local now = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', now[1] .. '.' .. string.format('%06d', now[2]))
end
return n
"""


class BatchExpander:
    def __init__(self, client: redis.Redis, settings: Settings, app: Celery, chunk: int = 1000) -> None:
        self._redis = client
        self._settings = settings
        self._app = app
        self._chunk = chunk
        self._create = client.register_script(CREATE_ITEM_LUA)
        self._cancel_rest = client.register_script(CANCEL_UNEXPANDED_LUA)
        # An item's first event, skipped when a resumed expansion finds it already has events.
        self._queued_once = client.register_script(
            "if redis.call('HGET', KEYS[1], 'seq') ~= '0' then return 0 end\n" + APPEND_EVENT_LUA
        )

    def expand(self, batch_id: str) -> None:
        batch: dict[str, str] = self._redis.hgetall(keys.batch(batch_id))  # type: ignore[assignment]
        if not batch:
            log.warning("batch %s: no record (expired?); nothing to expand", batch_id)
            return
        total, expanded = int(batch["total"]), int(batch.get("expanded", 0))
        started = time.monotonic()
        while expanded < total:
            if self._redis.hget(keys.batch(batch_id), "cancel_requested"):
                self._cancel_rest(keys=[keys.batch(batch_id)], args=[total - expanded])
                self._redis.hset(keys.batch(batch_id), "expanded", str(total))
                log.info("batch %s cancelled; %d items never enqueued", batch_id, total - expanded)
                break
            raw_items = self._redis.lrange(keys.batch_inputs(batch_id), expanded, expanded + self._chunk - 1)
            ids = self._create_items(batch_id, batch, expanded, raw_items)  # type: ignore[arg-type]
            self._publish(ids)
            expanded += len(raw_items)
            self._redis.hset(keys.batch(batch_id), "expanded", str(expanded))
        self._redis.delete(keys.batch_inputs(batch_id))
        log.info("batch %s: %d items enqueued in %.1f s", batch_id, total, time.monotonic() - started)

    def _create_items(self, batch_id: str, batch: dict[str, str], start: int, raw_items: list[str]) -> list[str]:
        now = time.time()
        ttl_s = self._settings.job_ttl_s
        temperature = float(batch["temperature"]) if batch.get("temperature") else None
        # Absent in batches stored before the option existed: not streamed, the batch default.
        stream = batch.get("stream") == "1"
        ids: list[str] = []
        with self._redis.pipeline(transaction=False) as pipe:
            for offset, raw in enumerate(raw_items):
                index = start + offset
                item: dict[str, Any] = json.loads(raw)
                job_id = item_id(batch_id, index)
                custom_id = item.pop("custom_id", None)
                fields = new_job_fields(job_id, batch["program"], item, batch.get("model"), temperature, now, stream)
                fields |= {"batch": batch_id, "batch_key": keys.batch(batch_id), "index": str(index)}
                if custom_id is not None:
                    fields["custom_id"] = custom_id
                args: list[str] = [str(ttl_s)]
                for name, value in fields.items():
                    args += [name, value]
                self._create(keys=[keys.job(job_id)], args=args, client=pipe)
                pipe.zadd(keys.queued(self._settings.bulk_queue), {job_id: now}, nx=True)
                script_keys, argv = append_event_args(
                    job_id,
                    EventType.status,
                    {"status": JobStatus.queued.value},
                    maxlen=self._settings.event_stream_maxlen,
                    ttl_s=ttl_s,
                )
                self._queued_once(keys=script_keys, args=argv, client=pipe)
                ids.append(job_id)
            pipe.execute()
        return ids

    def _publish(self, job_ids: list[str]) -> None:
        queue = self._settings.bulk_queue
        with self._app.producer_or_acquire() as producer, producer.batch(max_size=len(job_ids) or 1):
            for job_id in job_ids:
                self._app.send_task(RUN_JOB_TASK, args=[job_id], task_id=job_id, queue=queue, producer=producer)
