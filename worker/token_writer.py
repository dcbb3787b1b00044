"""Token events go to Redis in pipelined batches, from one task on the worker's event loop.

A job streams tens of tokens a second and every token is an event: written
one round trip at a time they were the largest cost of a job in the worker
(about 40% of its CPU in a py-spy profile at 14 jobs/s). Here a job only
queues its events; the writer sends whatever has piled up (up to
`max_batch`) as one pipeline. With no backlog an event goes out at once, so
nothing waits for a timer; under load the batches grow by themselves.

Order is kept (one queue, one writer), and `barrier()` lets a job wait until
everything it queued is written before it writes its terminal event. Each
event carries its job's lease token: an event refused because the job has
finished (cancelled) or because the token no longer holds it (another
worker took the job over) is reported to `on_refused`, which stops the job.
"""

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core import scripts
from core.events import JOB_FENCED, JOB_FINISHED, EventType, append_event_args
from core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class _Event:
    job_id: str
    keys: list[str]
    args: list[str]


class TokenWriter:
    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        on_refused: Callable[[str, int], None],
        max_batch: int = 500,
    ) -> None:
        self._redis = client
        self._settings = settings
        self._loop = loop
        self._loop_thread: int | None = None
        self._on_refused = on_refused
        self._max_batch = max_batch
        self._pending: list[_Event | asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self._task = asyncio.create_task(self._write_forever(), name="token-writer")

    def put(self, job_id: str, fence: str, data: dict[str, Any]) -> None:
        """Queue one token event; from the loop or from a thread of a program without `aforward`."""
        script_keys, argv = append_event_args(
            job_id,
            EventType.token,
            data,
            maxlen=self._settings.event_stream_maxlen,
            ttl_s=self._settings.job_ttl_s,
            fence=fence,
        )
        event = _Event(job_id, script_keys, argv)
        if threading.get_ident() == self._loop_thread:
            self._queue(event)
        else:
            self._loop.call_soon_threadsafe(self._queue, event)

    async def barrier(self) -> None:
        """Until every event queued so far is written (or given up on)."""
        done: asyncio.Future[None] = self._loop.create_future()
        self._queue(done)
        await done

    def _queue(self, item: "_Event | asyncio.Future[None]") -> None:
        self._pending.append(item)
        self._wake.set()

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                events = [item for item in batch if isinstance(item, _Event)]
                if events:
                    await self._write(events)
                for item in batch:
                    if isinstance(item, asyncio.Future) and not item.done():
                        item.set_result(None)

    async def _write(self, events: list[_Event]) -> None:
        try:
            results = await scripts.apipeline(self._redis, [("append_event", e.keys, e.args) for e in events])
        except RedisError as e:
            # Tokens are lost from the live stream only; the job's result still carries every field in full.
            log.warning("could not write %d token events: %s", len(events), e)
            return
        for event, result in zip(events, results, strict=True):
            if result in (JOB_FINISHED, JOB_FENCED):
                self._on_refused(event.job_id, int(result))
            elif isinstance(result, Exception):
                log.warning("a token event of job %s was refused: %s", event.job_id, result)
