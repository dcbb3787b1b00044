"""Waiting: how long is left, and how often to ask when the server cannot wait for us.

The API holds `POST` and `GET /jobs/{id}` open until the job ends (`?wait`,
at most WAIT_MAX_S), so a job's `result()` asks that again and again. A
batch has no such wait, and a server from before `GET ?wait` answers at
once: those are polled, quickly at first, since most interactive jobs end
within a second or two, then less often.
"""

import itertools
import time
from collections.abc import Iterator

# The API's WAIT_MAX_S default; a larger `?wait` is refused with 422.
WAIT_MAX_S = 60.0


def poll_delays(first_s: float = 0.05, max_s: float = 1.0, growth: float = 1.5) -> Iterator[float]:
    delay = first_s
    while delay < max_s:
        yield delay
        delay *= growth
    yield from itertools.repeat(max_s)


class Deadline:
    def __init__(self, timeout_s: float | None) -> None:
        self._at = None if timeout_s is None else time.monotonic() + timeout_s

    def remaining_s(self) -> float | None:
        """Seconds left (0 once passed), or None without a deadline."""
        return None if self._at is None else max(0.0, self._at - time.monotonic())

    def sleep_s(self, delay_s: float) -> float:
        """`delay_s`, or less if the deadline comes first."""
        remaining = self.remaining_s()
        return delay_s if remaining is None else min(delay_s, remaining)

    @property
    def passed(self) -> bool:
        return self.remaining_s() == 0.0
