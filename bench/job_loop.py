"""CPU per program call: one event loop per worker thread, or one per process (what the worker does).

    .venv/bin/python -m bench.job_loop [--threads 32] [--calls 150] [--rounds 3]

Runs the `qa` program's `acall` (its artifact, our LM settings, DSPy's
per-call caches as in the worker) against the scripted LM answering at once,
in this one process, `--threads` threads each making `--calls` calls in a
row, three ways:

- *a loop per thread*: each thread runs its calls on an event loop of its
  own (worker/streaming.py's `_JobLoop`), as the worker did before;
- *one loop per process*: each thread hands its calls to one loop running
  on a thread of its own and waits (`worker.streaming._run`), as the worker
  does now;
- *one loop, no threads*: `--threads` tasks on one loop, the way the
  direct-call baseline (bench/baseline_app.py) runs calls.

Reports CPU per call (`time.process_time`, this process only, after a warm-up
round of each) per round, alternating the three, so a change in the machine's
speed during the run hits all three alike. Writes `bench/results/job_loop.md`.
"""

import argparse
import asyncio
import itertools
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

from core.offline import disable_runtime_downloads

disable_runtime_downloads()  # before dspy imports litellm, as in worker/__init__.py

import dspy  # noqa: E402

from bench.report import command_line, git_state, machine, table, versions  # noqa: E402
from core.settings import get_settings  # noqa: E402
from program.lm import build_adapter, build_lm  # noqa: E402
from program.registry import get_program_spec  # noqa: E402
from tests.support import start_lm_simulator  # noqa: E402
from worker import streaming  # noqa: E402
from worker.dspy_speedups import install as install_dspy_speedups  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--calls", type=int, default=150, help="calls per thread per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "job_loop.md")
    args = parser.parse_args()

    lm_proc, lm_base = start_lm_simulator("job-loop-lm", "--ttft-s", "0", "--tokens-per-s", "0")
    try:
        rows, medians = run(args.threads, args.calls, args.rounds, lm_base)
    finally:
        lm_proc.stop()
    first = medians[0]
    lines = [
        "# CPU per program call: an event loop per thread or one per process",
        "",
        "```sh",
        command_line("bench.job_loop"),
        "```",
        "",
        f"- Run: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        f"- Code: {git_state()}",
        *[f"- {what}: {value}" for what, value in machine()],
        "- Packages: " + ", ".join(f"{n} {v}" for n, v in versions(["dspy"])),
        f"- {args.threads} threads x {args.calls} calls of `qa.acall` per round, the scripted LM answering at once"
        " (its CPU not counted); see the module docstring.",
        "",
        *table(
            ["way", *(f"round {i + 1} (ms/call)" for i in range(args.rounds)), "median", "vs a loop per thread"],
            [(*row, f"**{m:.3f}**", f"{m / first:.2f}") for row, m in zip(rows, medians, strict=True)],
        ),
        "",
    ]
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))


def run(threads: int, calls: int, rounds: int, lm_base: str) -> tuple[list[list[str]], list[float]]:
    os.environ.update({"LM_MODEL": "openai/simulated", "LM_API_BASE": lm_base, "LM_CACHE": "false"})
    get_settings.cache_clear()
    install_dspy_speedups()
    streaming.raise_lm_connection_cap(threads)
    settings = get_settings()
    spec = get_program_spec(settings, settings.default_program)
    qa = spec.build()
    qa.load(str(spec.artifact))
    qa.set_lm(None)
    lm, adapter = build_lm(settings), build_adapter()
    numbers = itertools.count()

    def question() -> str:
        return f"Question number {next(numbers)}: what does a queue add to a call?"

    def in_threads(call: Callable[[], None]) -> None:
        workers = [threading.Thread(target=call) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    def loop_per_thread(n: int) -> None:
        def calls_() -> None:
            loop = streaming._JobLoop()
            for _ in range(n):
                with dspy.context(lm=lm, adapter=adapter, disable_history=True, trace=None):
                    loop.run_until_complete(qa.acall(question=question()))
            loop.close()

        in_threads(calls_)

    def loop_per_process(n: int) -> None:
        def calls_() -> None:
            for _ in range(n):
                with dspy.context(lm=lm, adapter=adapter, disable_history=True, trace=None):
                    streaming._run(qa.acall(question=question()))

        in_threads(calls_)

    def one_loop_no_threads(n: int) -> None:
        async def user() -> None:
            for _ in range(n):
                with dspy.context(lm=lm, adapter=adapter, disable_history=True, trace=None):
                    await qa.acall(question=question())

        async def users() -> None:
            await asyncio.gather(*(user() for _ in range(threads)))

        asyncio.run(users())

    ways: list[tuple[str, Callable[[int], None]]] = [
        ("a loop per thread (before)", loop_per_thread),
        ("one loop per process (now)", loop_per_process),
        ("one loop, no threads (as the baseline)", one_loop_no_threads),
    ]
    for _, way in ways:
        way(5)  # warm-up: connections, loops, caches
    per_call: list[list[float]] = [[] for _ in ways]
    for _ in range(rounds):
        for i, (name, way) in enumerate(ways):
            cpu_0 = time.process_time()
            way(calls)
            per_call[i].append(1000 * (time.process_time() - cpu_0) / (threads * calls))
            print(f"{name}: {per_call[i][-1]:.3f} ms CPU per call", flush=True)
    rows = [[name, *(f"{v:.3f}" for v in values)] for (name, _), values in zip(ways, per_call, strict=True)]
    return rows, [statistics.median(values) for values in per_call]


if __name__ == "__main__":
    main()
