"""Celery's task events (Flower's task list), published from a thread of their own.

On an event loop (our threads pool on Redis), Celery buffers task events
(received, started, succeeded...) and flushes them from that loop: one Redis
PUBLISH per flush, on the thread that also takes messages off the queue and
hands them to the pool. Under load that thread waited on those round trips,
and for the GIL after each, so jobs started later (bench/results/patches.md).

Here the loop only wakes a flusher thread, which publishes whatever has
accumulated. Celery 5.7's `EventDispatcher.flush` publishes under the
dispatcher's mutex and removes only what it published (other threads append
while it writes), so flushing from another thread is what it is built for;
heartbeats, sent directly, take the same mutex.
"""

import logging
import threading

from celery.worker.consumer.consumer import Consumer

from core.settings import Settings

log = logging.getLogger(__name__)


class _Flusher:
    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self._due = threading.Event()
        threading.Thread(target=self._run, name="task-events", daemon=True).start()

    def wake(self) -> None:
        self._due.set()

    def _run(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            try:
                self._consumer._flush_events()
            except Exception:  # the events stay buffered; the next flush tries again
                log.exception("could not publish task events")


_lock = threading.Lock()


def _on_send_event_buffered(self: Consumer) -> None:
    flusher: _Flusher | None = self.__dict__.get("_dj_flusher")
    if flusher is None:
        with _lock:
            flusher = self.__dict__.get("_dj_flusher")
            if flusher is None:
                flusher = self.__dict__["_dj_flusher"] = _Flusher(self)
    flusher.wake()


def apply(settings: Settings) -> bool:
    """Before the worker starts: its event dispatcher takes this method when it is created."""
    if not callable(getattr(Consumer, "on_send_event_buffered", None)) or not callable(
        getattr(Consumer, "_flush_events", None)
    ):
        return False
    Consumer.on_send_event_buffered = _on_send_event_buffered
    return Consumer.on_send_event_buffered is _on_send_event_buffered
