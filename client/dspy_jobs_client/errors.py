"""Every exception the client raises: one base, `DspyJobsError`, and a class per thing a caller handles.

`APIError` and its subclasses are the server's answers: its `message`
(one line a person can act on), its `detail` (the same sentence, or one
entry per invalid field for a 422), the status and, for 429 and 503, the
`Retry-After` it asked for. `JobError` and its subclasses are jobs that
ended without a result; they carry the job's record.
"""

import email.utils
import time
from collections.abc import Mapping
from typing import Any

import httpx

from dspy_jobs_client.records import BatchRecord, JobFailure, JobRecord


class DspyJobsError(Exception):
    """Base of every exception this client raises."""


class APIConnectionError(DspyJobsError):
    """The API could not be reached, or the connection broke, and retrying did not help."""


class StreamInterrupted(APIConnectionError):
    """A job's event stream could not be resumed within its reconnect window."""

    def __init__(self, message: str, last_event_id: int) -> None:
        super().__init__(message)
        # Pass to `Job.stream(last_event_id=...)` to carry on later from exactly here.
        self.last_event_id = last_event_id


class APIError(DspyJobsError):
    """The API answered with an error status."""

    def __init__(
        self,
        status_code: int,
        message: str,
        detail: str | list[dict[str, Any]] | None = None,
        retry_after_s: float | None = None,
        request: str = "",
    ) -> None:
        super().__init__(f"{request}: {status_code} {message}" if request else f"{status_code} {message}")
        self.status_code = status_code
        self.message = message
        self.detail = detail if detail is not None else message
        self.retry_after_s = retry_after_s


class BadRequest(APIError):
    """400: the body could not be parsed at all."""


class AuthenticationError(APIError):
    """401: no API key, or not one the server knows."""


class NotFound(APIError):
    """404: no such job, batch or program (never issued, expired, or another key's)."""


class Conflict(APIError):
    """409: e.g. cancelling a job or batch that already finished."""


class PayloadTooLarge(APIError):
    """413: the body or the batch is over the server's limit; nothing was stored."""


class InvalidRequest(APIError):
    """422: invalid input or options; `message` names the field, `detail` lists every invalid one."""


class RateLimited(APIError):
    """429: over this key's submission rate or open-stream limit; `retry_after_s` says when to retry."""


class ServiceUnavailable(APIError):
    """503: Redis or the queue is unavailable, or the program cannot be served; nothing was stored."""


class ServerError(APIError):
    """Any other 5xx."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: AuthenticationError,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: RateLimited,
    503: ServiceUnavailable,
}


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """`Retry-After` in seconds: either form the header may take (seconds, or an HTTP date)."""
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(raw).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def api_error(response: httpx.Response) -> APIError:
    """The typed exception for an error response (its body already read)."""
    message = response.reason_phrase or f"HTTP {response.status_code}"
    detail: str | list[dict[str, Any]] | None = None
    try:
        body = response.json()
    except ValueError:
        # Not ours (a proxy's error page, say): its text is the best message there is.
        body = None
        if response.text.strip():
            message = response.text.strip()[:500]
    if isinstance(body, dict) and "message" in body:
        message = str(body["message"])
        detail = body.get("detail")
    status = response.status_code
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    request = f"{response.request.method} {response.request.url.path}"
    return kind(status, message, detail, retry_after_s(response.headers), request)


class JobError(DspyJobsError):
    """A job ended without a result; `job` is its final record."""

    def __init__(self, job: JobRecord, message: str) -> None:
        super().__init__(message)
        self.job = job


class JobFailed(JobError):
    """The program or the LM failed (after the retries the server allows); `failure` says how."""

    def __init__(self, job: JobRecord) -> None:
        failure = job.error or JobFailure(type="unknown", message="", retryable=False, code=500, attempts=0)
        super().__init__(job, f"job {job.id} failed: {failure.type}: {failure.message}")
        self.failure = failure


class JobCancelled(JobError):
    def __init__(self, job: JobRecord) -> None:
        super().__init__(job, f"job {job.id} was cancelled")


class JobExpired(JobError):
    """No worker started the job before its `expires_after_s`; it never ran."""

    def __init__(self, job: JobRecord) -> None:
        super().__init__(job, f"job {job.id} expired before any worker started it")


class JobTimeout(DspyJobsError, TimeoutError):
    """The job had not finished when the caller stopped waiting; it goes on running (`job.cancel()` stops it)."""

    def __init__(self, job: JobRecord, timeout_s: float) -> None:
        super().__init__(f"job {job.id} still {job.status} after {timeout_s:g} s")
        self.job = job


class BatchTimeout(DspyJobsError, TimeoutError):
    """The batch had not ended when the caller stopped waiting; its items go on running."""

    def __init__(self, batch: BatchRecord, timeout_s: float) -> None:
        counts = batch.counts
        super().__init__(
            f"batch {batch.id} still {batch.status} after {timeout_s:g} s ({counts.finished} of {counts.total} done)"
        )
        self.batch = batch


class WebhookVerificationError(DspyJobsError):
    """A webhook delivery whose signature, timestamp or body does not check out: do not act on it."""
