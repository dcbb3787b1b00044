"""A job's event stream as typed events, resumed by itself when the connection drops.

The API numbers every event of a job (the SSE `id`) and replays what a
client missed when it reconnects with `Last-Event-ID` (docs/api.md). So
the stream remembers the last number it handed over and, on any break (the
connection reset, the API restarted, a 503 or 429 on reconnecting, or the
server ending the response early when it shuts down), connects again from
there; an event at or below that number is dropped. Nothing is repeated and
nothing is lost, as long as reconnecting succeeds within `reconnect_for_s`
of the first failure in a row; after that `StreamInterrupted` says where
it stopped. A stream ends after the job's `result` or `error` event.

httpx-sse hands the server's keep-alive comment (every SSE_PING_S of
silence) over as an empty `message` event: those are skipped. Event types
this client does not know are skipped too, so a newer server does not
break it.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent

from dspy_jobs_client.errors import APIConnectionError, APIError, StreamInterrupted
from dspy_jobs_client.http import AsyncTransport, SyncTransport
from dspy_jobs_client.records import JobRecord

# The server sends a keep-alive after SSE_PING_S (15 s) of silence: a read
# that hears nothing for much longer than that is a dead connection.
_SILENCE_S = 60.0
_RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
_RECONNECT_FIRST_S = 0.1
_RECONNECT_MAX_S = 2.0
_SSE_HEADERS = {"Accept": "text/event-stream", "Cache-Control": "no-store"}


@dataclass(frozen=True)
class StatusEvent:
    """The job changed status: `queued`; `waiting` (for LM capacity: `reason`, `model`, maybe `until`);
    `running` (with `attempt`); `retrying` (with `delay_s` and the `error`)."""

    seq: int
    status: str
    data: dict[str, Any] = field(repr=False)
    terminal = False

    @property
    def attempt(self) -> int | None:
        attempt = self.data.get("attempt")
        return int(attempt) if attempt is not None else None

    @property
    def starts_attempt(self) -> bool:
        """A new attempt begins: text streamed before it belongs to an attempt that was abandoned."""
        return self.status == "running"


@dataclass(frozen=True)
class TokenEvent:
    """A chunk of output field `field`. A typed field's text is its JSON; a job with `stream=False` sends each
    field whole, as one token event."""

    seq: int
    field: str
    text: str
    terminal = False


@dataclass(frozen=True)
class ResultEvent:
    """The job succeeded: the last event, carrying its record (`job.result` holds the typed output)."""

    seq: int
    job: JobRecord
    terminal = True


@dataclass(frozen=True)
class ErrorEvent:
    """The job failed, was cancelled or expired: the last event, carrying its record (`job.error`)."""

    seq: int
    job: JobRecord
    terminal = True


JobEvent = StatusEvent | TokenEvent | ResultEvent | ErrorEvent


def parse_event(sse: ServerSentEvent) -> JobEvent | None:
    """The typed event, or None for a keep-alive or a kind of event this client does not know."""
    if not sse.data:
        return None
    seq = int(sse.id)
    data = json.loads(sse.data)
    if sse.event == "status":
        return StatusEvent(seq, str(data.get("status", "")), data)
    if sse.event == "token":
        return TokenEvent(seq, str(data["field"]), str(data["text"]))
    if sse.event == "result":
        return ResultEvent(seq, JobRecord.from_json(data))
    if sse.event == "error":
        return ErrorEvent(seq, JobRecord.from_json(data))
    return None


class Transcript:
    """Each output field's text as the stream writes it, attempt-aware: a `running` event starts over.

    transcript = Transcript()
    for event in job.stream():
        transcript.apply(event)
    transcript.fields["answer"]
    """

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}

    def apply(self, event: JobEvent) -> None:
        if isinstance(event, StatusEvent) and event.starts_attempt:
            self.fields = {}
        elif isinstance(event, TokenEvent):
            self.fields[event.field] = self.fields.get(event.field, "") + event.text


class _Resume:
    """Where a stream is, and how long to wait before connecting again."""

    def __init__(self, job_id: str, last_event_id: int, reconnect_for_s: float) -> None:
        self.path = f"/jobs/{job_id}/events"
        self.last = last_event_id
        self._reconnect_for_s = reconnect_for_s
        self._failing_since: float | None = None
        self._failures = 0
        self._last_at_connect = last_event_id
        self._empty_ends = 0

    def headers(self) -> dict[str, str]:
        return {**_SSE_HEADERS, "Last-Event-ID": str(self.last)} if self.last else dict(_SSE_HEADERS)

    def connected(self) -> None:
        # The window is for getting through; the backoff keeps growing until an event arrives, so a
        # server that answers and closes at once is not asked again and again.
        self._failing_since = None
        self._last_at_connect = self.last

    def take(self, sse: ServerSentEvent) -> JobEvent | None:
        """The event to hand over, or None (a keep-alive, a repeat, an unknown kind)."""
        if not sse.data or int(sse.id) <= self.last:
            return None
        self.last = int(sse.id)
        self._failures = 0
        return parse_event(sse)

    def ask_if_over(self) -> bool:
        """After a response that ended before the job's last event: whether to ask the job whether it is over.

        The server also ends a response at once, with nothing in it, for a client that has every event of a
        finished job (a `last_event_id` at or past the end) and for a batch item that ended without ever
        running (it has no events). A single empty response is more likely a server shutting down, whose
        successor will send what is left: only two in a row, with nothing else failing between them, are
        taken as the end.
        """
        self._empty_ends = self._empty_ends + 1 if self.last == self._last_at_connect else 0
        return self._empty_ends >= 2

    def delay_s(self, problem: Exception | None) -> float:
        """Seconds before reconnecting after `problem` (None: the response ended before the job did), or
        `StreamInterrupted` once the stream has failed to get anywhere for `reconnect_for_s`."""
        if isinstance(problem, APIError) and problem.status_code not in _RETRYABLE_STATUSES:
            raise problem
        if problem is not None:
            self._empty_ends = 0
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since > self._reconnect_for_s:
            raise StreamInterrupted(
                f"{self.path}: could not resume after event {self.last} for {self._reconnect_for_s:g} s: "
                f"{problem or 'each response ended before the job did'}",
                self.last,
            ) from problem
        retry_after = problem.retry_after_s if isinstance(problem, APIError) else None
        if retry_after is not None:
            return retry_after
        delay = min(_RECONNECT_MAX_S, _RECONNECT_FIRST_S * 2**self._failures)
        self._failures += 1
        return delay


def _stream_timeout(transport: SyncTransport | AsyncTransport) -> httpx.Timeout:
    return httpx.Timeout(transport.settings.timeout_s, read=_SILENCE_S)


def follow(transport: SyncTransport, job_id: str, last_event_id: int, reconnect_for_s: float) -> Iterator[JobEvent]:
    resume = _Resume(job_id, last_event_id, reconnect_for_s)
    while True:
        problem: Exception | None = None
        try:
            response = transport.send(
                "GET",
                resume.path,
                headers=resume.headers(),
                idempotent=True,
                stream=True,
                retry=False,
                request_timeout=_stream_timeout(transport),
            )
            resume.connected()
            try:
                for sse in EventSource(response).iter_sse():
                    event = resume.take(sse)
                    if event is not None:
                        yield event
                        if event.terminal:
                            return
            finally:
                response.close()
            if resume.ask_if_over():
                record = JobRecord.from_json(transport.json("GET", f"/jobs/{job_id}", idempotent=True))
                if record.status.is_terminal:
                    return
        except (httpx.TransportError, APIConnectionError, APIError) as e:
            problem = e
        time.sleep(resume.delay_s(problem))


async def afollow(
    transport: AsyncTransport, job_id: str, last_event_id: int, reconnect_for_s: float
) -> AsyncIterator[JobEvent]:
    resume = _Resume(job_id, last_event_id, reconnect_for_s)
    while True:
        problem: Exception | None = None
        try:
            response = await transport.send(
                "GET",
                resume.path,
                headers=resume.headers(),
                idempotent=True,
                stream=True,
                retry=False,
                request_timeout=_stream_timeout(transport),
            )
            resume.connected()
            try:
                async for sse in EventSource(response).aiter_sse():
                    event = resume.take(sse)
                    if event is not None:
                        yield event
                        if event.terminal:
                            return
            finally:
                await response.aclose()
            if resume.ask_if_over():
                record = JobRecord.from_json(await transport.json("GET", f"/jobs/{job_id}", idempotent=True))
                if record.status.is_terminal:
                    return
        except (httpx.TransportError, APIConnectionError, APIError) as e:
            problem = e
        await asyncio.sleep(resume.delay_s(problem))
