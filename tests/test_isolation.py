"""Who may start an attempt in a worker process (worker/isolation.py), on one event loop, as the worker uses it."""

import asyncio

import pytest

from worker.isolation import Isolation, runs_alone


def test_only_the_last_allowed_delivery_runs_alone() -> None:
    assert [runs_alone(lost, 3) for lost in range(4)] == [False, False, True, True]
    assert runs_alone(1, 2)


async def settle() -> None:
    """Let every task that can run go as far as it can (no time passes: only turns of the loop)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def started(gate: Isolation, lone: bool = False) -> bool:
    """A start as the worker makes one; whether it said `alone`."""
    await gate.opened()
    alone = gate.reserve()
    await asyncio.sleep(0)  # the start's round trip to Redis
    gate.started(alone, lone)
    return alone


def test_the_first_start_in_an_idle_process_is_alone_and_holds_the_others_until_it_answers() -> None:
    async def scenario() -> None:
        gate = Isolation()
        alone = gate.reserve()
        assert alone and not gate.open, "it may turn out to be a lone job: nothing starts beside it yet"
        second = asyncio.create_task(started(gate))
        await settle()
        assert not second.done()
        gate.started(alone, lone=False)
        assert await second is False
        assert gate.open

    asyncio.run(scenario())


def test_a_lone_job_waits_for_the_running_ones_and_nothing_starts_meanwhile() -> None:
    async def scenario() -> None:
        gate = Isolation()
        await started(gate)
        await started(gate)
        # A lone job's start, made beside them, was claimed instead; it waits for its turn.
        alone = gate.reserve()
        gate.unreserve(alone)
        turn = asyncio.create_task(gate.run_alone())
        await settle()
        assert not gate.open
        newcomer = asyncio.create_task(started(gate))
        gate.ended(lone=False)
        await settle()
        assert not turn.done() and not newcomer.done()
        gate.ended(lone=False)
        await asyncio.wait_for(turn, 1)
        await settle()
        assert not newcomer.done(), "nothing starts while the lone job runs"
        gate.ended(lone=True)
        assert await asyncio.wait_for(newcomer, 1) is True
        assert gate.open

    asyncio.run(scenario())


def test_a_lone_job_cancelled_while_it_waits_leaves_the_process_open() -> None:
    async def scenario() -> None:
        gate = Isolation()
        await started(gate)
        turn = asyncio.create_task(gate.run_alone())
        await settle()
        assert not gate.open
        turn.cancel()
        with pytest.raises(asyncio.CancelledError):
            await turn
        assert gate.open
        gate.ended(lone=False)
        assert gate.reserve() is True

    asyncio.run(scenario())
