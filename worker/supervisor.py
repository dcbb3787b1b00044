"""Background loops that outlive their own failures, and say whether they are alive.

A loop on the worker's event loop (the webhook sender) that raised or
returned used to end silently: its task was done, nothing logged it, and the
heartbeat still called the worker healthy. `supervise` restarts it, after a
log line with the reason, and `Liveness` is what the loop says of itself
(when it last went round, how often it was restarted), which the heartbeat
publishes for `/ready` and `/metrics`.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Between a loop's end and its restart: a loop that fails at once every time must not spin.
RESTART_DELAY_S = 1.0


@dataclass
class Liveness:
    went_round_at: float = 0.0
    restarts: int = 0

    def went_round(self) -> None:
        self.went_round_at = time.time()


async def supervise(
    name: str,
    start: Callable[[], Awaitable[None]],
    liveness: Liveness,
    on_restart: Callable[[], Awaitable[None]],
) -> None:
    """Runs `start()` until cancelled, again after each end; `on_restart` counts it (its failure is only logged)."""
    while True:
        try:
            await start()
            log.error("%s ended by itself; restarting it in %g s", name, RESTART_DELAY_S)
        except Exception:
            log.exception("%s crashed; restarting it in %g s", name, RESTART_DELAY_S)
        liveness.restarts += 1
        try:
            await on_restart()
        except Exception as e:
            log.warning("could not count the restart of %s: %s", name, e)
        await asyncio.sleep(RESTART_DELAY_S)
