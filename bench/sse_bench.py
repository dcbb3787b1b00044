"""SSE benchmark: LM chunk to client latency, and fan-out to many clients of one job.

    .venv/bin/python -m bench.sse_bench [--clients 100,500,1000,2000,5000,10000] [--py-spy PATH]

Starts everything it needs (a private redis-server, the scripted LM
`harness/lm_simulator.py`, one Celery worker, one API process under uvicorn,
all on 127.0.0.1), runs the scenarios, stops everything, prints a Markdown
report and writes it to `bench/results/sse.md`. No timing is asserted: this
measures, it does not judge. Process logs go to `test-artifacts/bench-*.log`.

How a run is staged so that every client is listening before the first token:
the worker is told to stop consuming its queue (Celery remote control,
`cancel_consumer`), the job is submitted (it waits, `queued`), every client
connects and receives the job's first event (`queued`, replayed from the
Stream, which proves the API has subscribed it to the live channel), and
only then is the worker told to consume again (`add_consumer`).

Times: the LM simulator records the wall-clock time at which it hands each
content chunk to its server (`chunk_times` in `GET /_requests`); each client
records `time.time()` when the bytes of an event arrive; a Redis subscriber
in this process records when each event was published (what the API sees).
Everything runs on one machine, so the clocks agree.

Clients are raw asyncio protocols on uvloop (one socket, a few hundred bytes
of state each), spread over `--client-procs` processes so that the client side
is not one GIL; CPU use of every process is sampled from /proc.

Sections of the report: 1. latency with one client per job; 2. fan-out sweep
(`--clients`, stops at the first N that breaks), then `--hold-clients` on a
short job; 3. py-spy profile of the API at `--profile-at` clients (py-spy
comes with the dev group; `--py-spy PATH` picks another); 4. the same fan-out with
the API's garbage collector timed, as is and tuned (`--gc-compare`).
"""

import argparse
import datetime
import gc
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.report import exit_on_signal, find_py_spy, ms, raise_fd_limit
from bench.sse.render import report
from bench.sse.stack import Bench, Run
from harness.processes import ROOT

RESULTS = ROOT / "bench" / "results" / "sse.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--clients",
        default="100,250,500,1000,2000,5000,10000",
        help="fan-out sizes, in order; stops after the first that breaks (p99 > 10 s or clients incomplete)",
    )
    parser.add_argument(
        "--hold-clients",
        type=int,
        default=10_000,
        help="then, unless the sweep got there: this many clients on a short job (0: skip)",
    )
    parser.add_argument("--hold-words", type=int, default=3, help="question words of the short job")
    parser.add_argument(
        "--gc-compare",
        default="500,1000",
        help="then these fan-out sizes again, the API timing its GC as it is and with the GC tuned ('': skip)",
    )
    parser.add_argument(
        "--api-gc",
        choices=["off", "stats", "freeze", "tuned"],
        default="off",
        help="off: the API exactly as tests start it; stats: through a wrapper timing its garbage "
        "collections; freeze: the same plus gc.freeze() after imports; tuned: freeze plus "
        "gc.set_threshold(50_000, 20, 100)",
    )
    parser.add_argument("--tps", type=float, default=20, help="tokens per second of the fan-out job")
    parser.add_argument("--latency-rates", default="20,50", help="tokens/s of the latency jobs")
    parser.add_argument("--latency-jobs", type=int, default=3, help="latency jobs per rate")
    parser.add_argument("--words", type=int, default=45, help="words in each question (about 2 tokens per word)")
    parser.add_argument("--client-procs", type=int, default=2, help="processes running the clients")
    parser.add_argument(
        "--connect-concurrency", type=int, default=100, help="connections being set up at once, per process"
    )
    parser.add_argument("--stream-timeout-s", type=float, default=120, help="give up on a run's stream after this")
    parser.add_argument("--budget-s", type=float, default=480, help="skip runs that would not fit in this")
    parser.add_argument("--api-redis-max-connections", type=int, default=200)
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=10,
        help="before each run, wait up to this long for other processes on the machine to go quiet",
    )
    parser.add_argument(
        "--py-spy",
        default=find_py_spy(),
        help="py-spy binary; profiles the API during the fan-out run of --profile-at clients (default: PATH, .venv)",
    )
    parser.add_argument("--profile-at", type=int, default=1000)
    parser.add_argument("--py-spy-native", action="store_true", help="include C frames (py-spy --native)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] == ["--serve-api"]:
        serve_api(int(raw[1]), raw[2], Path(raw[3]))
        return
    args = parse_args(raw)
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.monotonic()
    raise_fd_limit()  # inherited by the API and every other process started from here
    signal.signal(signal.SIGTERM, exit_on_signal)  # so that `finally` stops every process we started
    bench = Bench(args)
    latency: list[Run] = []
    fanout: list[Run] = []
    hold: list[Run] = []
    gc_runs: list[Run] = []
    skipped: list[str] = []

    def keep(run: Run, into: list[Run]) -> None:
        into.append(run)
        _progress(run)

    try:
        bench.start()
        for tps in (float(x) for x in args.latency_rates.split(",") if x):
            for _ in range(args.latency_jobs):
                keep(bench.run("latency", 1, tps, args.words), latency)
        sizes = [int(x) for x in args.clients.split(",") if x]
        for i, n in enumerate(sizes):
            remaining = args.budget_s - (time.monotonic() - t0)
            estimate = _estimate_s(fanout, n)
            if estimate > remaining:
                skipped.extend(
                    f"N={m} not run: estimated {_estimate_s(fanout, m):.0f} s, {remaining:.0f} s of the --budget-s left"
                    for m in sizes[i:]
                )
                break
            run = bench.run("fanout", n, args.tps, args.words, profile=n == args.profile_at)
            keep(run, fanout)
            if run.total is None or run.complete < 0.99 * n or run.total.p99 > 10:
                skipped.extend(f"N={m} not run: N={n} already broke (see above)" for m in sizes[i + 1 :])
                break
        if args.hold_clients and not any(r.clients >= args.hold_clients for r in fanout):
            remaining = args.budget_s - (time.monotonic() - t0)
            if remaining > 60:
                keep(bench.run("hold", args.hold_clients, args.tps, args.hold_words), hold)
            else:
                skipped.append(f"hold run of {args.hold_clients} clients not run: {remaining:.0f} s of budget left")
        gc_sizes = [int(x) for x in args.gc_compare.split(",") if x and int(x)]
        for mode in ("stats", "tuned") if gc_sizes else ():
            remaining = args.budget_s - (time.monotonic() - t0)
            if remaining < 30 * len(gc_sizes):
                skipped.append(f"GC comparison ({mode}) not run: {remaining:.0f} s of budget left")
                continue
            bench.restart_api(mode)
            for n in gc_sizes:
                keep(bench.run("gc", n, args.tps, args.words), gc_runs)
    finally:
        bench.stop()
    text = report(args, started, latency, fanout, hold, gc_runs, skipped, time.monotonic() - t0)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"(written to {args.output})", file=sys.stderr)


def serve_api(port: int, gc_mode: str, stats_path: Path) -> None:
    """`--serve-api PORT MODE FILE`: the unchanged `api.main:app` under uvicorn, timing its garbage collections.

    MODE `stats` only records; `freeze` also calls `gc.freeze()` once everything is imported, `tuned`
    also raises the collection thresholds (the one-line changes this lets you evaluate). Totals are
    rewritten to FILE every 0.5 s.
    """
    import uvicorn

    from api.main import app

    if gc_mode in ("freeze", "tuned"):
        gc.freeze()
    if gc_mode == "tuned":
        gc.set_threshold(50_000, 20, 100)
    totals: dict[str, Any] = {"seconds": 0.0, "collections": [0, 0, 0]}
    began = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            totals["seconds"] += time.perf_counter() - began[0]
            totals["collections"][info["generation"]] += 1

    gc.callbacks.append(on_gc)

    def dump() -> None:
        tmp = stats_path.with_suffix(".tmp")
        while True:
            tmp.write_text(json.dumps(totals))
            os.replace(tmp, stats_path)
            time.sleep(0.5)

    threading.Thread(target=dump, daemon=True, name="gc-stats").start()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _estimate_s(done: list[Run], n: int) -> float:
    """Rough wall time of a fan-out run of n clients, scaled from the largest one so far."""
    if not done:
        return 30.0
    last = max(done, key=lambda r: r.clients)
    return last.wall_s * max(1.0, n / last.clients)


def _progress(run: Run) -> None:
    t = run.total
    summary = f"p50 {ms(t.p50)} ms, p99 {ms(t.p99)} ms, max {ms(t.max)} ms" if t else run.note
    print(
        f"[sse-bench] {run.scenario} N={run.clients} {run.label} tps={run.tps:g}: {run.complete}/{run.clients} "
        f"complete, "
        f"{summary} ({run.wall_s:.1f} s)",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    main()
