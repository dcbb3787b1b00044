"""Which failures are worth another attempt, how long to wait, and what to tell the client.

Transient provider trouble (rate limits, timeouts, 5xx, dropped connections)
is retried with exponential backoff and full jitter, or after the provider's
own Retry-After when it sends one. Everything else fails at once: bad
credentials, an invalid request, a context window exceeded, output that
cannot be parsed, a program this worker cannot load, an input that does
not fit the program (the API validates it first; this catches the rest).
An attempt that ends with no outcome at all (its worker died) is the
reaper's to count: a job lost that way too often ends `DeadLettered`
(worker/job_store.py).
The HTTP-style `code` follows the common gateway mapping, so clients can
treat a job error like the response it would have been.
"""

import random

import dspy
from dspy.utils.exceptions import (
    AdapterParseError,
    ContextWindowExceededError,
    LMAuthError,
    LMInvalidRequestError,
    LMRateLimitError,
    LMTimeoutError,
)

from core.jobs import JobError
from worker.runtime import InvalidInput, ProgramUnavailable


class JobCancelled(Exception):
    """The job was cancelled while it ran; stop and write nothing more."""


class JobTimeLimitExceeded(TimeoutError):
    """The job streamed for longer than `job_time_limit_s`."""


def _timed_out(e: BaseException) -> bool:
    """A timeout, however the client wrapped it: DSPy's native engine reports a
    read timeout as an LMTransportError caused by the HTTP client's timeout."""
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, LMTimeoutError | TimeoutError) or "Timeout" in type(current).__name__:
            return True
        current = current.__cause__ or current.__context__
    return "timed out" in str(e)


def error_code(e: BaseException) -> int:
    if isinstance(e, ProgramUnavailable):
        return 503
    if isinstance(e, InvalidInput):
        return 400
    if isinstance(e, AdapterParseError):
        return 422
    if isinstance(e, LMRateLimitError):
        return 429
    if _timed_out(e):
        return 504
    if isinstance(e, ContextWindowExceededError):
        return 413
    if isinstance(e, LMInvalidRequestError):
        return 400
    if isinstance(e, LMAuthError):
        return 502  # our credentials, not the client's: the upstream refused us
    if isinstance(e, dspy.LMError):
        return 502
    return 500


def is_retryable(e: BaseException) -> bool:
    return isinstance(e, Exception) and bool(dspy.is_retryable_lm_error(e))


def job_error(e: BaseException, attempts: int) -> JobError:
    message = str(e).strip() or type(e).__name__
    return JobError(
        type=type(e).__name__,
        message=message[:2000],
        retryable=is_retryable(e),
        code=error_code(e),
        attempts=attempts,
    )


def retry_delay_s(e: BaseException, attempt: int, base_s: float, max_s: float) -> float:
    """Provider's Retry-After if given, else full-jitter exponential backoff."""
    retry_after = getattr(e, "retry_after", None)
    if isinstance(retry_after, int | float) and retry_after >= 0:
        return float(min(retry_after, max_s))
    return random.uniform(0, min(max_s, base_s * 2 ** (attempt - 1)))
