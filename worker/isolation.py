"""A job's last allowed delivery runs alone in its process, so that it is dead-lettered only for its own death.

A worker that dies takes every job it runs with it, and the reaper counts a
lost delivery against each (worker/reaper.py): the job that killed it and its
innocent neighbours alike. Sent back together, they start together on the
next worker, where a job that kills at once takes the same neighbours with it
again, until they all reach `job_max_deliveries` (tests/test_dead_letter.py
saw a batch item dead-lettered beside the poison item that way). So a job
that has lost all its deliveries but one (a *lone* job) starts only when
nothing else runs in its process, and nothing else starts until its attempt
ends: the death that dead-letters a job is then its own (or an outside kill
during that attempt), and a neighbour never loses its last delivery to it.

Only the last delivery: running every job that lost a delivery alone would
run the whole cohort of any dead worker (a deploy's kill, a lost node, the
out-of-memory killer choosing a process) one job at a time, and hold every
other job of the process back meanwhile.

Whether a job is lone is in its record, which the worker reads as it starts
the job: the start says whether anything else runs in the process (`alone`),
and a lone job started while something does is claimed instead (leased,
still queued, a `waiting` event), waits here for its turn, and is started
again, alone (core/lua/jobs.lua `start`). Any other job waits before it
starts while a lone job runs or waits to.

Used only on the process's event loop: no locks; every change wakes the waiters.
"""

import asyncio

# The `waiting` events' reasons: a lone job waits for the others to end; another job waits for a lone one.
RUNS_ALONE = "runs_alone"
ANOTHER_RUNS_ALONE = "another_runs_alone"


def runs_alone(deliveries_lost: int, max_deliveries: int) -> bool:
    """Whether a job that lost `deliveries_lost` deliveries is on its last one."""
    return deliveries_lost >= max_deliveries - 1


class Isolation:
    """Who may start an attempt in this process now (module docstring)."""

    def __init__(self) -> None:
        self._others = 0  # attempts of jobs that are not lone: running, or being started
        self._lone = False  # a lone job's attempt runs, or is being started
        self._lone_waiting = 0
        # A start that said `alone` is in flight: until it answers, it may be a lone job's.
        self._probing = False
        self._changed = asyncio.Event()

    @property
    def open(self) -> bool:
        """Whether a job not known to be lone may start now."""
        return not (self._lone or self._lone_waiting or self._probing)

    async def opened(self) -> None:
        while not self.open:
            await self._changed.wait()

    def reserve(self) -> bool:
        """Count a start about to be made while `open`; True when nothing else runs (it may start a lone job)."""
        alone = self._others == 0
        self._others += 1
        self._probing = alone
        return alone

    def started(self, alone: bool, lone: bool) -> None:
        """The reserved start began an attempt; `lone` only if it was `alone`."""
        if lone:
            self._others -= 1
            self._lone = True
        self._answered(alone)

    def unreserve(self, alone: bool) -> None:
        """The reserved start began nothing: refused, or a lone job claimed to wait for its turn."""
        self._others -= 1
        self._answered(alone)

    async def run_alone(self) -> None:
        """A claimed lone job's turn: once nothing else runs. Its attempt (or its refused start) ends with
        `ended(lone=True)`."""
        self._lone_waiting += 1
        try:
            while self._lone or self._others or self._probing:
                await self._changed.wait()
        finally:
            self._lone_waiting -= 1
            self._wake()
        self._lone = True

    def ended(self, lone: bool) -> None:
        """An attempt begun through here ended."""
        if lone:
            self._lone = False
        else:
            self._others -= 1
        self._wake()

    def _answered(self, alone: bool) -> None:
        if alone:
            self._probing = False
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
