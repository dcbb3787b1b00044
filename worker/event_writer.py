"""One thread per worker process that writes token events in pipelined batches.

A job streams tens of tokens a second and every token is an event: written
one round trip at a time from each job's thread, they were the largest cost
of a job in the worker (about 40% of its CPU in a py-spy profile at 14
jobs/s). Here job threads only put events on a queue; the writer takes
whatever has piled up (up to `max_batch`) and sends it as one pipeline. With
no backlog an event goes out at once, so nothing waits for a timer; under
load the batches grow by themselves.

Order is kept: one queue, one writer, and `barrier()` lets a job thread wait
until everything it queued is written before it writes its terminal event
synchronously. A job whose record refuses an event (finished: cancelled) is
remembered, so its thread stops at its next token.
"""

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import redis

from core.events import APPEND_EVENT_LUA, JOB_FINISHED, EventType, append_event_args
from core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class _Event:
    job_id: str
    keys: list[str]
    args: list[str]


@dataclass
class _Barrier:
    done: threading.Event = field(default_factory=threading.Event)


class EventWriter:
    def __init__(self, client: redis.Redis, settings: Settings, max_batch: int = 500) -> None:
        self._redis = client
        self._settings = settings
        # EVALSHA straight into the pipeline: a registered script in a pipeline
        # makes redis-py ask SCRIPT EXISTS first, a round trip per batch.
        self._append_sha = client.register_script(APPEND_EVENT_LUA).sha
        self._queue: queue.SimpleQueue[_Event | _Barrier] = queue.SimpleQueue()
        self._max_batch = max_batch
        self._finished: set[str] = set()
        self._thread = threading.Thread(target=self._write_forever, name="event-writer", daemon=True)
        self._thread.start()

    def put(self, job_id: str, event_type: EventType, data: dict[str, Any]) -> None:
        script_keys, argv = append_event_args(
            job_id,
            event_type,
            data,
            maxlen=self._settings.event_stream_maxlen,
            ttl_s=self._settings.job_ttl_s,
        )
        self._queue.put(_Event(job_id, script_keys, argv))

    def refused(self, job_id: str) -> bool:
        """True once the job's record refused an event because the job is finished."""
        return job_id in self._finished

    def barrier(self, job_id: str, timeout_s: float = 30.0) -> None:
        """Wait until every event queued so far is written; then forget the job."""
        barrier = _Barrier()
        self._queue.put(barrier)
        if not barrier.done.wait(timeout_s):
            log.warning("job %s: token events still unwritten after %.0f s", job_id, timeout_s)
        self._finished.discard(job_id)

    def _write_forever(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            events = [item for item in batch if isinstance(item, _Event)]
            if events:
                self._write(events)
            for item in batch:
                if isinstance(item, _Barrier):
                    item.done.set()

    def _write(self, events: list[_Event]) -> None:
        try:
            results = self._send(events)
            if any(isinstance(r, redis.exceptions.NoScriptError) for r in results):
                # Redis restarted (or its scripts were flushed): load it again; the
                # refused events were not written, so sending them again repeats nothing.
                self._redis.script_load(APPEND_EVENT_LUA)
                retry = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
                for i, result in zip(retry, self._send([events[i] for i in retry]), strict=True):
                    results[i] = result
        except redis.RedisError as e:
            # Tokens are lost from the live stream only; the job's result
            # still carries every field in full.
            log.warning("could not write %d token events: %s", len(events), e)
            return
        for event, result in zip(events, results, strict=True):
            if result == JOB_FINISHED:
                self._finished.add(event.job_id)

    def _send(self, events: list[_Event]) -> list[Any]:
        with self._redis.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.evalsha(self._append_sha, len(event.keys), *event.keys, *event.args)
            results: list[Any] = pipe.execute(raise_on_error=False)
        return results
