"""A supervised background loop is restarted, with a log line, whatever ends it (worker/supervisor.py; no processes)."""

import asyncio
import logging

import pytest

from worker import supervisor
from worker.supervisor import Liveness, supervise


def test_a_loop_that_crashes_or_returns_is_restarted_and_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(supervisor, "RESTART_DELAY_S", 0.0)
    liveness = Liveness()
    runs: list[int] = []
    counted: list[int] = []
    third_run = asyncio.Event()

    async def loop() -> None:
        runs.append(len(runs))
        liveness.went_round()
        if len(runs) == 1:
            raise KeyError("poison")
        if len(runs) == 2:
            return
        third_run.set()
        await asyncio.Event().wait()

    async def count() -> None:
        counted.append(1)
        if len(counted) == 1:
            raise ConnectionError("Redis is away")

    async def main() -> None:
        task = asyncio.create_task(supervise("test loop", loop, liveness, count))
        await third_run.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.INFO, logger="worker.supervisor"):
        asyncio.run(main())

    assert len(runs) == 3 and liveness.restarts == 2 and len(counted) == 2
    assert liveness.went_round_at > 0
    messages = [r.getMessage() for r in caplog.records]
    assert "test loop crashed; restarting it in 0 s" in messages
    assert "test loop ended by itself; restarting it in 0 s" in messages
    assert any("could not count the restart of test loop: Redis is away" in m for m in messages)
    crash = next(r for r in caplog.records if "crashed" in r.getMessage())
    assert crash.exc_info is not None and "poison" in str(crash.exc_info[1])
