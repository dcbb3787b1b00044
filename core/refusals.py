"""What the job and event functions in Redis refuse a write with, named once for both sides.

core/scripts.py writes these into the Lua (`__REFUSALS__`), so Python and the
functions can never disagree on what a number means. Every refusal is
negative; a function that takes the write returns a sequence number or an
attempt count (positive) or 0.
"""

from enum import IntEnum


class Refusal(IntEnum):
    NO_JOB = -1  # the job has no record: it expired, or was never stored
    FINISHED = -2  # it has ended: it takes no more events and never runs again
    FENCED = -3  # the writer's lease token no longer holds it: another worker took it over
    BATCH_CANCELLED = -4  # its batch was cancelled before it started
    EXPIRED = -5  # it was not started before its deadline
    LEASED = -6  # another worker holds a live lease on it
    NOT_FINISHED = -7  # it has not ended yet: feedback is on an outcome
    FEEDBACK_FULL = -8  # it holds as many feedback entries as one job may


def lua_constants() -> str:
    """`local NO_JOB, FINISHED, ... = -1, -2, ...`: the refusals as the Lua names them."""
    return f"local {', '.join(r.name for r in Refusal)} = {', '.join(str(r.value) for r in Refusal)}"
