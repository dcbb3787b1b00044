"""A submitted job: its record, its result, its event stream, cancelling it.

`Job` and `AsyncJob` are handles: `record` is the job as last read, and
nothing is fetched until a method is called.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import httpx

from dspy_jobs_client.errors import JobCancelled, JobExpired, JobFailed, JobTimeout
from dspy_jobs_client.events import ErrorEvent, JobEvent, ResultEvent, afollow, follow
from dspy_jobs_client.feedback import JobFeedback, Score, feedback_body
from dspy_jobs_client.http import AsyncTransport, SyncTransport
from dspy_jobs_client.polling import WAIT_MAX_S, Deadline, poll_delays
from dspy_jobs_client.records import JobRecord, JobStatus

# How long a stream keeps trying to reconnect, from the first failed try in a row.
RECONNECT_FOR_S = 60.0


def wait_request(wait_s: float | None, timeout_s: float) -> dict[str, Any]:
    """`GET /jobs/{id}`'s arguments: `?wait`, and a read timeout long enough to hear the answer."""
    if not wait_s:
        return {}
    return {"params": {"wait": round(wait_s, 3)}, "request_timeout": httpx.Timeout(timeout_s + wait_s)}


def answered_early(asked_at: float, wait_s: float) -> bool:
    """A job still running came back well before its wait was up: a server without `GET ?wait`, so poll."""
    return time.monotonic() - asked_at < wait_s / 2


def outcome(record: JobRecord) -> dict[str, Any]:
    """A finished job's result, or how it ended as an exception."""
    if record.status is JobStatus.succeeded:
        return record.result or {}
    if record.status is JobStatus.cancelled:
        raise JobCancelled(record)
    if record.status is JobStatus.expired:
        raise JobExpired(record)
    raise JobFailed(record)


class Job:
    def __init__(self, transport: SyncTransport, record: JobRecord, wait_max_s: float = WAIT_MAX_S) -> None:
        self._transport = transport
        self._wait_max_s = wait_max_s
        self.record = record

    @property
    def id(self) -> str:
        return self.record.id

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, program={self.record.program!r}, status={self.record.status.value!r})"

    def refresh(self, wait_s: float | None = None) -> JobRecord:
        """Read the record again (`GET /jobs/{id}`); with `wait_s`, once the job has ended if it does
        within that long (at most the server's WAIT_MAX_S)."""
        extra = wait_request(wait_s, self._transport.settings.timeout_s)
        self.record = JobRecord.from_json(self._transport.json("GET", f"/jobs/{self.id}", idempotent=True, **extra))
        return self.record

    def wait(self, timeout: float | None = None) -> JobRecord:
        """The record once the job has ended, however it ended; `JobTimeout` if it has not within `timeout`
        seconds (None: no limit)."""
        deadline = Deadline(timeout)
        delays = poll_delays()
        while not self.record.status.is_terminal:
            if deadline.passed:
                raise JobTimeout(self.record, timeout or 0.0)
            wait_s, asked_at = deadline.sleep_s(self._wait_max_s), time.monotonic()
            self.refresh(wait_s)
            if not self.record.status.is_terminal and answered_early(asked_at, wait_s):
                time.sleep(deadline.sleep_s(next(delays)))
        return self.record

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The program's output fields, typed as its signature says; `JobFailed`, `JobCancelled`,
        `JobExpired` if it ended otherwise, `JobTimeout` if it has not ended within `timeout` seconds."""
        return outcome(self.wait(timeout))

    def cancel(self) -> JobRecord:
        """Stop the job: a queued one never runs, a running one stops. `Conflict` if it had already ended."""
        data = self._transport.json("POST", f"/jobs/{self.id}/cancel", idempotent=False)
        self.record = JobRecord.from_json(data)
        return self.record

    def feedback(
        self, score: Score, comment: str | None = None, correction: Mapping[str, Any] | None = None
    ) -> JobFeedback:
        """Judge the finished job: `score` 0 to 1 or "good" / "bad", a comment, a `correction` of its output
        fields (`{"answer": "Paris"}`); every entry the job holds. `InvalidRequest` (422) names a correction's
        field the program lacks or of the wrong type; `Conflict` if the job has not ended."""
        data = self._transport.json(
            "POST", f"/jobs/{self.id}/feedback", json=feedback_body(score, comment, correction), idempotent=False
        )
        return JobFeedback.from_json(data)

    def feedback_entries(self) -> JobFeedback:
        """Every feedback entry the job holds, oldest first."""
        return JobFeedback.from_json(self._transport.json("GET", f"/jobs/{self.id}/feedback", idempotent=True))

    def stream(self, *, last_event_id: int = 0, reconnect_for_s: float = RECONNECT_FOR_S) -> Iterator[JobEvent]:
        """Every event of the job after `last_event_id`, in order, resuming by itself across dropped
        connections; ends after the `ResultEvent` or `ErrorEvent` (whose record becomes `record`)."""
        for event in follow(self._transport, self.id, last_event_id, reconnect_for_s):
            if isinstance(event, ResultEvent | ErrorEvent):
                self.record = event.job
            yield event


class AsyncJob:
    def __init__(self, transport: AsyncTransport, record: JobRecord, wait_max_s: float = WAIT_MAX_S) -> None:
        self._transport = transport
        self._wait_max_s = wait_max_s
        self.record = record

    @property
    def id(self) -> str:
        return self.record.id

    def __repr__(self) -> str:
        return f"AsyncJob(id={self.id!r}, program={self.record.program!r}, status={self.record.status.value!r})"

    async def refresh(self, wait_s: float | None = None) -> JobRecord:
        """Read the record again (`GET /jobs/{id}`); with `wait_s`, once the job has ended if it does
        within that long (at most the server's WAIT_MAX_S)."""
        extra = wait_request(wait_s, self._transport.settings.timeout_s)
        data = await self._transport.json("GET", f"/jobs/{self.id}", idempotent=True, **extra)
        self.record = JobRecord.from_json(data)
        return self.record

    # `timeout` as on the blocking handle, rather than asyncio.timeout around the call: running out raises
    # JobTimeout, which carries the record.
    async def wait(self, timeout: float | None = None) -> JobRecord:  # noqa: ASYNC109
        """The record once the job has ended, however it ended; `JobTimeout` if it has not within `timeout`
        seconds (None: no limit)."""
        deadline = Deadline(timeout)
        delays = poll_delays()
        while not self.record.status.is_terminal:
            if deadline.passed:
                raise JobTimeout(self.record, timeout or 0.0)
            wait_s, asked_at = deadline.sleep_s(self._wait_max_s), time.monotonic()
            await self.refresh(wait_s)
            if not self.record.status.is_terminal and answered_early(asked_at, wait_s):
                await asyncio.sleep(deadline.sleep_s(next(delays)))
        return self.record

    async def result(self, timeout: float | None = None) -> dict[str, Any]:  # noqa: ASYNC109
        """The program's output fields, typed as its signature says; `JobFailed`, `JobCancelled`,
        `JobExpired` if it ended otherwise, `JobTimeout` if it has not ended within `timeout` seconds."""
        return outcome(await self.wait(timeout))

    async def cancel(self) -> JobRecord:
        """Stop the job: a queued one never runs, a running one stops. `Conflict` if it had already ended."""
        data = await self._transport.json("POST", f"/jobs/{self.id}/cancel", idempotent=False)
        self.record = JobRecord.from_json(data)
        return self.record

    async def feedback(
        self, score: Score, comment: str | None = None, correction: Mapping[str, Any] | None = None
    ) -> JobFeedback:
        """Judge the finished job (see `Job.feedback`); every entry the job holds."""
        data = await self._transport.json(
            "POST", f"/jobs/{self.id}/feedback", json=feedback_body(score, comment, correction), idempotent=False
        )
        return JobFeedback.from_json(data)

    async def feedback_entries(self) -> JobFeedback:
        """Every feedback entry the job holds, oldest first."""
        return JobFeedback.from_json(await self._transport.json("GET", f"/jobs/{self.id}/feedback", idempotent=True))

    async def stream(
        self, *, last_event_id: int = 0, reconnect_for_s: float = RECONNECT_FOR_S
    ) -> AsyncIterator[JobEvent]:
        """Every event of the job after `last_event_id`, in order, resuming by itself across dropped
        connections; ends after the `ResultEvent` or `ErrorEvent` (whose record becomes `record`)."""
        async for event in afollow(self._transport, self.id, last_event_id, reconnect_for_s):
            if isinstance(event, ResultEvent | ErrorEvent):
                self.record = event.job
            yield event
