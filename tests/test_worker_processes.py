"""How many worker processes `make up` starts: one interactive worker per usable core unless told."""

import os

from core.settings import Settings, usable_cores
from stack.up import _worker_names


def test_make_up_starts_an_interactive_worker_per_core_and_one_bulk_worker() -> None:
    names = _worker_names(Settings())

    assert len(os.sched_getaffinity(0)) == usable_cores()
    assert names == [(f"worker{i + 1}", "interactive") for i in range(usable_cores())] + [("bulk", "bulk")]


def test_worker_processes_overrides_the_core_count() -> None:
    assert _worker_names(Settings(worker_processes=3)) == [
        ("worker1", "interactive"),
        ("worker2", "interactive"),
        ("worker3", "interactive"),
        ("bulk", "bulk"),
    ]
