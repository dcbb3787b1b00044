"""Tasks cancelled while they talk to Redis that carry on, with Python's wait_for and with the patch's
(patches/asyncio_wait_for.py, harness/cancellations.py).

.venv/bin/python -m bench.lost_cancellations --tasks 400    # writes bench/results/lost_cancellations.md
"""

import argparse
import asyncio
from pathlib import Path
from typing import Any

from bench.report import results_header
from core.settings import Settings
from harness.cancellations import carried_on
from harness.processes import start_redis
from patches import asyncio_wait_for

RESULTS = Path(__file__).parent / "results"


def _use(wait_for: Any) -> None:
    module: Any = asyncio
    module.wait_for = module.tasks.wait_for = wait_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=400, help="tasks cancelled per row")
    args = parser.parse_args()
    proc, url = start_redis("redis-lost-cancellations")
    rows = []
    try:
        for name in ("Python's", "patched"):
            if name == "patched":
                asyncio_wait_for.apply(Settings())
            else:
                _use(asyncio_wait_for._original)
            for pipelined in (True, False):
                lost = asyncio.run(carried_on(url, args.tasks, pipelined))
                what = "a pipeline (ZADD, EXPIRE)" if pipelined else "one command (ZADD)"
                rows.append(f"| {name} | {what} | {lost} of {args.tasks} |")
    finally:
        _use(asyncio_wait_for._original)
        if proc is not None:
            proc.stop()
    lines = [
        *results_header(
            "Tasks cancelled while they talk to Redis that carry on",
            f".venv/bin/python -m bench.lost_cancellations --tasks {args.tasks}",
        ),
        "Each task loops over its command and is cancelled at a random moment within 4 ms; one still running a "
        "second later lost its cancellation (harness/cancellations.py).",
        "",
        "| asyncio.wait_for | each task sends | carried on |",
        "|---|---|---|",
        *rows,
        "",
    ]
    RESULTS.joinpath("lost_cancellations.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
