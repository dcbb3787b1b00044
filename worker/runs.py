"""A job this worker process holds, from the moment it takes it until its attempt ends."""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from worker.capacity import Slot

# Sends a job's task again: (job id, model, delay_s).
Send = Callable[[str, str | None, float], Awaitable[None]]


@dataclass
class Run:
    """A job this process holds: claimed and waiting for capacity, or running an attempt."""

    job_id: str
    token: str
    priority: str
    model: str | None
    fields: dict[str, str] = field(default_factory=dict)
    leased: bool = False
    attempts: int = 0
    # The slot granted before it started, until its first LM call takes it.
    slot: Slot | None = None
    # Its last allowed delivery: its attempt runs alone in this process (worker/isolation.py).
    lone: bool = False
    task: "asyncio.Task[Any] | None" = None
    # Why it was stopped from outside: cancelled, fenced, shutdown.
    stop: str | None = None
    streamed: int = 0
    # time.monotonic() past which it may wait no more.
    deadline: float | None = None


def waiting_event(run: Run, reason: str, paused_until: float | None, default_model: str) -> dict[str, Any]:
    """The `waiting` status event of a job that waits for LM capacity: why, for which model, until when."""
    data: dict[str, Any] = {"status": "waiting", "reason": reason, "model": run.model or default_model}
    if paused_until is not None:
        data["until"] = round(paused_until, 3)
    return data
