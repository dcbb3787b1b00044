"""The benchmark suite: our job service side by side with the direct-call baseline.

    .venv/bin/python -m bench [--quick] [--no-profile] [--output BENCHMARKS.md]

Starts everything it needs on 127.0.0.1 (a private redis-server, the scripted
LM `harness/lm_simulator.py` restarted with each scenario's `--ttft-s` and
`--tokens-per-s`, one interactive Celery worker with the threads pool, one API
process, the baseline `bench/baseline_app.py`), runs the scenarios, stops
everything and writes the results, with the machine, the package versions and
the command, to `BENCHMARKS.md`. Process logs: `test-artifacts/bench-suite-*.log`.

1. Overhead at realistic latency: an LM taking about 1 s for a 62-chunk answer;
   50, 200 and 1,000 closed-loop clients; ours `POST /jobs?wait=60` with
   `"stream": false` (comparable with the baseline, which does not stream) and
   with `"stream": true` (every token an event), the baseline `POST /predict`.
2. Pure overhead: an LM answering at once; maximum jobs/s and CPU seconds per
   job, the same three systems, in several rounds (each round runs all three),
   reported by the round with the median ours / baseline CPU ratio: the
   machine's speed drifts by more than the differences measured here
   (ours / baseline 3.3, 3.8 and 4.2 in three single runs of the same code
   within an hour).
3. In-flight capacity: LM calls one worker process keeps open at once, its
   memory; the API's memory with 1,000 open SSE streams.
4. Time to first token through SSE against the LM's own.
5. The embedded default (bench/embedded.py), on servers and a stack of its
   own: tokens/s and items/s at each slot and thread count, prefill with and
   without the prefix cache, one call at a time against a 200-item batch
   through the service, and interactive latency during it.
Then, when py-spy is available, a profile of the worker and the API under
scenario 2's load.
"""

import argparse
import asyncio
import datetime
import signal
import time
import traceback
from pathlib import Path

from bench import embedded as embedded_bench
from bench.report import ROOT, exit_on_signal, find_py_spy, git_state, raise_fd_limit, run_loop
from bench.scenarios.capacity import in_flight, sse_memory
from bench.scenarios.closed_loop import closed_loop
from bench.scenarios.common import OURS, OURS_STREAMING, SYSTEMS, LMTiming, answer_chunks, log
from bench.scenarios.profiling import profile_ours
from bench.scenarios.render import render
from bench.scenarios.results import Results, median_round, worker_log_problems
from bench.scenarios.stack import Stack, idle_cpu, wait_quiet
from bench.scenarios.ttft import time_to_first_token
from core.settings import Settings

OUTPUT = ROOT / "BENCHMARKS.md"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", default="50,200,1000", help="scenario 1: concurrent clients, in order")
    parser.add_argument("--ttft-s", type=float, default=0.4, help="scenario 1: LM time to first token")
    parser.add_argument("--tokens-per-s", type=float, default=100, help="scenario 1: LM tokens per second")
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--duration-s", type=float, default=20.0, help="measured seconds of each closed-loop run")
    parser.add_argument("--drain-s", type=float, default=10.0, help="after a run, how long open requests may finish")
    parser.add_argument("--overhead-clients", type=int, default=64, help="scenario 2: concurrent clients")
    parser.add_argument("--overhead-rounds", type=int, default=3, help="scenario 2: rounds of the three systems")
    parser.add_argument("--overhead-duration-s", type=float, default=10.0, help="scenario 2: measured s of a run")
    parser.add_argument("--inflight-jobs", type=int, default=1200, help="scenario 3: jobs submitted at once")
    parser.add_argument("--inflight-ttft-s", type=float, default=15.0, help="scenario 3: LM time to first token")
    parser.add_argument("--sse-streams", type=int, default=1000, help="scenario 3: open SSE streams")
    parser.add_argument("--ttft-clients", type=int, default=10, help="scenario 4: concurrent clients")
    parser.add_argument("--ttft-duration-s", type=float, default=15.0)
    parser.add_argument("--ttft-ttft-s", type=float, default=0.5, help="scenario 4: LM time to first token")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=Settings.model_fields["worker_concurrency"].default,
        help="each worker's threads (WORKER_CONCURRENCY; default: `make up`'s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=Settings().effective_worker_processes,
        help="interactive worker processes (default: `make up`'s, WORKER_PROCESSES; scenario 3 measures one alone)",
    )
    parser.add_argument("--quiet-wait-s", type=float, default=30.0, help="wait this long at most for a quiet machine")
    parser.add_argument("--scenarios", default="1,2,3,4,5", help="which scenarios to run")
    parser.add_argument("--embedded-items", type=int, default=200, help="scenario 5: items in the batch")
    parser.add_argument("--embedded-serial-calls", type=int, default=20, help="scenario 5: direct calls")
    parser.add_argument("--embedded-idle-jobs", type=int, default=8, help="scenario 5: interactive jobs, idle")
    parser.add_argument("--embedded-slots", default="1,2,4,8", help="scenario 5: slot counts to sweep")
    parser.add_argument("--embedded-threads", default="1,2", help="scenario 5: thread counts to sweep")
    parser.add_argument("--embedded-sweep-calls", type=int, default=4, help="scenario 5: calls per slot")
    parser.add_argument("--py-spy", default=find_py_spy(), help="py-spy binary (profile after scenario 2)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--profile-duration-s", type=float, default=25.0)
    parser.add_argument("--profile-clients", type=int, default=50, help="clients of the profile under scenario 1's LM")
    parser.add_argument("--quick", action="store_true", help="short runs, fewer clients: a smoke test of the suite")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the API, the worker and the baseline (repeatable), e.g. LM_ENGINE=lm15",
    )
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    for item in args.env:
        if "=" not in item:
            parser.error(f"--env takes NAME=VALUE, got {item!r}")
    if args.quick:
        args.clients, args.warmup_s, args.duration_s, args.drain_s = "20,50", 2.0, 5.0, 5.0
        args.overhead_rounds, args.overhead_duration_s = 1, 5.0
        args.inflight_jobs, args.sse_streams, args.ttft_duration_s, args.profile_duration_s = 60, 100, 5.0, 5.0
        args.quiet_wait_s = 2.0
        args.embedded_items, args.embedded_serial_calls, args.embedded_idle_jobs = 10, 3, 2
        args.embedded_slots, args.embedded_threads, args.embedded_sweep_calls = "1,2", "1", 1
    return args


async def run_suite(args: argparse.Namespace, stack: Stack, res: Results) -> None:
    scenarios = set(args.scenarios.split(","))
    if "1" in scenarios:
        for clients in _ints(args.clients):
            for system in SYSTEMS:
                res.realistic.append(
                    await closed_loop(
                        stack, system, clients, args.warmup_s, args.duration_s, args.drain_s, args.quiet_wait_s
                    )
                )
        if args.py_spy and not args.no_profile:
            res.profiles += await profile_ours(
                stack,
                args.py_spy,
                OURS_STREAMING,
                args.profile_clients,
                args.profile_duration_s,
                args.quiet_wait_s,
                f"scenario 1's LM, {args.profile_clients} clients, streaming",
                "realistic",
            )
    if "4" in scenarios:
        await asyncio.to_thread(stack.start_lm, LMTiming(args.ttft_ttft_s, args.tokens_per_s))
        await asyncio.to_thread(wait_quiet, stack, args.quiet_wait_s)
        res.ttft = await time_to_first_token(stack, args.ttft_clients, args.ttft_duration_s)
    if "3" in scenarios:
        await asyncio.to_thread(stack.start_lm, LMTiming(args.inflight_ttft_s, args.tokens_per_s))
        await asyncio.to_thread(wait_quiet, stack, args.quiet_wait_s)
        res.capacity = await in_flight(stack, args.inflight_jobs)
        await asyncio.to_thread(stack.settle)
        res.sse = await sse_memory(stack, args.sse_streams)
    if "2" in scenarios:
        await asyncio.to_thread(stack.start_lm, LMTiming(0.0, 0.0))
        for _ in range(args.overhead_rounds):
            res.overhead_rounds.append(
                [
                    await closed_loop(
                        stack,
                        system,
                        args.overhead_clients,
                        args.warmup_s,
                        args.overhead_duration_s,
                        args.drain_s,
                        args.quiet_wait_s,
                    )
                    for system in SYSTEMS
                ]
            )
        res.overhead = median_round(res.overhead_rounds)
        if args.py_spy and not args.no_profile:
            res.profiles[:0] = await profile_ours(
                stack,
                args.py_spy,
                OURS,
                args.overhead_clients,
                args.profile_duration_s,
                args.quiet_wait_s,
                f"scenario 2's load, {args.overhead_clients} clients, not streaming",
                "overhead",
            )
    if "5" in scenarios:
        # Its own stack (the embedded server would take the CPU of everything above); the others idle meanwhile.
        res.embedded = await asyncio.to_thread(
            embedded_bench.measure,
            args.embedded_items,
            args.embedded_serial_calls,
            args.embedded_idle_jobs,
            tuple(_ints(args.embedded_slots)),
            tuple(_ints(args.embedded_threads)),
            args.embedded_sweep_calls,
        )
    if not args.py_spy and not args.no_profile:
        res.notes.append("py-spy not found: no profile (install it in .venv to get one).")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.monotonic()
    raise_fd_limit()  # inherited by every process started from here
    signal.signal(signal.SIGTERM, exit_on_signal)  # so that `finally` stops every process we started
    stack = Stack(args.concurrency, args.workers, dict(item.split("=", 1) for item in args.env))
    res = Results(args, started, answer_chunks(), code=git_state())
    try:
        log("starting redis-server and the LM simulator")
        stack.start(LMTiming(args.ttft_s, args.tokens_per_s))  # failing here writes nothing
        assert stack.worker and stack.api and stack.baseline
        res.idle_rss = {
            "worker": stack.worker_rss_started,
            "api": stack.api_rss_started,
            "baseline": stack.baseline_rss_started,
        }
        res.idle_cores = idle_cpu(stack)
        try:
            run_loop(run_suite(args, stack, res))
        except Exception as e:  # write what was measured, and say where it stopped
            log(f"the suite stopped early:\n{traceback.format_exc()}")
            res.notes.append(f"**The suite stopped early** ({type(e).__name__}: {e}); sections not reached say so.")
    finally:
        stack.stop()
    res.worker_log_problems = worker_log_problems()
    res.duration_s = time.monotonic() - t0
    text = render(res)
    args.output.write_text(text)
    print(text)
    log(f"written to {args.output} ({res.duration_s / 60:.1f} min)")
