"""Which failures are retried, how long the wait, and the code a client sees."""

import dspy
import pytest
from dspy.utils.exceptions import (
    AdapterParseError,
    ContextWindowExceededError,
    LMAuthError,
    LMRateLimitError,
    LMTimeoutError,
    LMTransportError,
)

from worker.error_policy import error_code, is_retryable, job_error, retry_delay_s
from worker.runtime import InvalidInput, ProgramUnavailable


def rate_limited(retry_after: float | None = None) -> LMRateLimitError:
    return LMRateLimitError("slow down", model="m", provider="p", retry_after=retry_after)


def parse_error() -> AdapterParseError:
    return AdapterParseError(adapter_name="ChatAdapter", signature=dspy.Signature("q -> a"), lm_response="junk")


def read_timeout() -> LMTransportError:
    """DSPy's native engine reports a read timeout as a transport error caused by the client's timeout."""
    try:
        try:
            raise TimeoutError("read")
        except TimeoutError as cause:
            raise LMTransportError("connection failed", model="m", provider="p") from cause
    except LMTransportError as e:
        return e


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (parse_error(), 422),
        (rate_limited(), 429),
        (LMTimeoutError("too slow", model="m", provider="p"), 504),
        (read_timeout(), 504),
        (ContextWindowExceededError(model="m", message="too long"), 413),
        (LMAuthError("bad key", model="m", provider="p"), 502),
        (ProgramUnavailable("qa: artifact unreadable"), 503),
        (InvalidInput("question: not a string"), 400),
        (RuntimeError("ours"), 500),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_each_failure_has_its_gateway_code(error: Exception, code: int) -> None:
    assert error_code(error) == code


def test_provider_trouble_is_retried_and_our_own_is_not() -> None:
    assert is_retryable(rate_limited())
    assert is_retryable(LMTimeoutError("too slow", model="m", provider="p"))
    assert not is_retryable(LMAuthError("bad key", model="m", provider="p"))
    assert not is_retryable(parse_error())
    assert not is_retryable(InvalidInput("bad"))


def test_the_providers_retry_after_is_honoured_up_to_the_maximum() -> None:
    assert retry_delay_s(rate_limited(2.0), attempt=1, base_s=1, max_s=60) == 2.0
    assert retry_delay_s(rate_limited(600.0), attempt=1, base_s=1, max_s=60) == 60.0


def test_without_retry_after_the_backoff_is_full_jitter_under_a_doubling_cap() -> None:
    for attempt, cap in ((1, 1.0), (3, 4.0), (10, 60.0)):
        delays = [retry_delay_s(RuntimeError(), attempt, base_s=1, max_s=60) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays), attempt
        assert max(delays) > cap / 2, "full jitter spreads over the whole range"


def test_a_job_error_is_short_and_says_what_happened() -> None:
    error = job_error(RuntimeError("x" * 5000), attempts=3)

    assert (error.type, error.code, error.attempts, error.retryable) == ("RuntimeError", 500, 3, False)
    assert len(error.message) == 2000
    assert job_error(RuntimeError(), attempts=1).message == "RuntimeError"
