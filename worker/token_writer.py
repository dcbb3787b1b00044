"""Token events go to Redis in pipelined batches, from one task on the worker's event loop.

A job streams tens of tokens a second and every token is an event: written
one round trip at a time they were the largest cost of a job in the worker
(about 40% of its CPU in a py-spy profile at 14 jobs/s). Here a job only
queues its events; the writer sends whatever has piled up (up to
`max_batch`) as one pipeline. With no backlog an event goes out at once, so
nothing waits for a timer; under load the batches grow by themselves.

Tokens are also coalesced per job: a job's first token goes out at once,
and after it the job's tokens are written at most every
`token_coalesce_s` (30 ms by default), as one event per field holding
whatever text arrived meanwhile. A reader sees the same text, a few chunks
at a time; the worker and Redis write a fraction of the events (the
figures are in BENCHMARKS.md). `0` writes every chunk as its own event.

Order is kept (one queue, one writer; a job's buffered text goes out before
anything the job queues after it), and `barrier()` lets a job wait until
everything it queued is written before it writes its terminal event. Each
event carries its job's lease token: an event refused because the job has
finished (cancelled) or because the token no longer holds it (another
worker took the job over) is reported to `on_refused`, which stops the job.
"""

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core import scripts
from core.events import EventType, append_event_args
from core.refusals import Refusal
from core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class _Event:
    job_id: str
    keys: list[str]
    args: list[str]


@dataclass
class _Buffer:
    """A job's tokens waiting for its next write: (field, text) runs, each field's text joined."""

    fence: str
    runs: list[list[str]] = field(default_factory=list)
    flush_at: float = 0.0
    timer: asyncio.TimerHandle | None = None


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
        self._buffers: dict[str, _Buffer] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self._task = asyncio.create_task(self._write_forever(), name="token-writer")

    def put(self, job_id: str, fence: str, field_name: str, text: str) -> None:
        """One token of a job; from the loop or from a thread of a program without `aforward`."""
        if threading.get_ident() == self._loop_thread:
            self._put(job_id, fence, field_name, text)
        else:
            self._loop.call_soon_threadsafe(self._put, job_id, fence, field_name, text)

    def _put(self, job_id: str, fence: str, field_name: str, text: str) -> None:
        buffer = self._buffers.get(job_id)
        if buffer is None or buffer.fence != fence:
            buffer = self._buffers[job_id] = _Buffer(fence)
        if buffer.runs and buffer.runs[-1][0] == field_name:
            buffer.runs[-1].append(text)
        else:
            buffer.runs.append([field_name, text])
        now = self._loop.time()
        if now >= buffer.flush_at:
            # The job wrote nothing in the last window (or ever): at once.
            self._flush(job_id)
        elif buffer.timer is None:
            buffer.timer = self._loop.call_at(buffer.flush_at, self._flush, job_id)

    def _flush(self, job_id: str) -> None:
        buffer = self._buffers.get(job_id)
        if buffer is None:
            return
        buffer.flush_at = self._loop.time() + self._settings.token_coalesce_s
        if buffer.timer is not None:
            buffer.timer.cancel()
            buffer.timer = None
        for field_name, *texts in buffer.runs:
            script_keys, argv = append_event_args(
                job_id,
                EventType.token,
                {"field": field_name, "text": "".join(texts)},
                maxlen=self._settings.event_stream_maxlen,
                ttl_s=self._settings.job_ttl_s,
                fence=buffer.fence,
            )
            self._queue(_Event(job_id, script_keys, argv))
        buffer.runs.clear()

    async def barrier(self, job_id: str) -> None:
        """Until every token of the job, and everything queued before, is written (or given up on)."""
        self._flush(job_id)
        self._buffers.pop(job_id, None)
        done: asyncio.Future[None] = self._loop.create_future()
        self._queue(done)
        await done

    def forget(self, job_id: str) -> None:
        """The job stopped: its buffered tokens are dropped."""
        buffer = self._buffers.pop(job_id, None)
        if buffer is not None and buffer.timer is not None:
            buffer.timer.cancel()

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
            if result in (Refusal.FINISHED, Refusal.FENCED):
                self._on_refused(event.job_id, int(result))
            elif isinstance(result, Exception):
                log.warning("a token event of job %s was refused: %s", event.job_id, result)
