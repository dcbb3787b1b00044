"""The embedded default, from its server's slots to a batch: `python -m bench.embedded [--items 200] [...]`.

What a new user gets from `make up` with no settings: the embedded model
(llama.cpp's server over Gemma 3 270M, stack/embedded_lm.py), one
interactive worker, one bulk worker and the API, all with their defaults.
Measured in one run, side by side:

1. **Slots.** For each slot count (`--slots`, default 1, 2, 4, 8) and thread
   count (`--threads`, default 1, 2), a server of its own kept full: the
   `qa` program called directly (DSPy, the workers' LM settings and adapter)
   with as many calls in flight as slots, after one call per slot has
   prefilled the program's prefix: tokens/s, items/s, latency per call.
   What `EMBEDDED_LM_SLOTS` and `EMBEDDED_LM_THREADS` are chosen from.
2. **Prefill.** On `make up`'s server: the server's own prompt-processing
   time per `qa` call, different questions one after the other, with its
   prefix cache and without; and whether DSPy's instructions are in the
   prompt the server builds.
3. **One call at a time**: the same program on `make up`'s server, serially:
   what the model does for a caller that waits for each answer.
4. **Interactive jobs on an idle service**: `POST /jobs?wait=60`, one at a time.
5. **A batch of `--items` items** ("What is N plus N?") through the service,
   and interactive jobs submitted one at a time while it runs: the batch's
   items/s against section 3, its timeouts (`LMTimeoutError`, code 504),
   its parse rate, and interactive latency during the batch against idle.

Then the targets of issue #26, each as measured. Writes the results, with the
machine and the command, to `--output` (`bench/results/embedded.md`);
`python -m bench` includes them in BENCHMARKS.md. Logs:
`test-artifacts/bench-embedded-*.log`.
"""

import argparse
import datetime
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.embedded_server import (
    CallsRun,
    Prefill,
    QaCaller,
    SweepRow,
    batch_question,
    built_prompt,
    prefill,
    run_calls,
    slot_sweep,
)
from bench.report import ROOT, Dist, command_line, git_state, machine, table, versions
from core.settings import usable_cores
from harness.processes import Proc, start_api, start_embedded_lm, start_redis, start_worker

OUTPUT = ROOT / "bench" / "results" / "embedded.md"
PACKAGES = ["dspy", "litellm", "xllamacpp", "celery", "redis", "fastapi"]
INTERACTIVE_QUESTIONS = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "Is it better to read books or watch films?",
    "What is the boiling point of water at sea level in Celsius?",
    "Who wrote Romeo and Juliet?",
    "How many legs does a spider have?",
    "Why do boats float?",
    "What is the largest ocean on Earth?",
]
# Issue #26's targets.
BATCH_SPEEDUP_TARGET = 2.0
PARSED_TARGET = 0.98
INTERACTIVE_P99_TARGET = 1.5


@dataclass
class Latencies:
    seconds: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    def row(self) -> list[str]:
        if not self.seconds:
            return ["-", "-", "-", _outcomes(self.outcomes)]
        d = Dist.of(self.seconds)
        return [str(d.n), f"{d.p50:.2f}", f"{d.p99:.2f}", _outcomes(self.outcomes)]


@dataclass
class BatchRun:
    items: int
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    timeouts: int = 0
    answers_right: int = 0

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0


@dataclass
class Results:
    adapter: str
    slots: int
    threads: int
    sweep: list[SweepRow]
    prefill: tuple[Prefill, Prefill]
    instructions_in_prompt: bool
    serial: CallsRun
    idle: Latencies
    during: Latencies
    batch: BatchRun


def _outcomes(outcomes: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in outcomes.most_common()) or "-"


def interactive(client: httpx.Client, questions: list[str], latencies: Latencies) -> None:
    for question in questions:
        started = time.monotonic()
        response = client.post("/jobs", params={"wait": 60}, json={"question": question}, timeout=70)
        elapsed = time.monotonic() - started
        job = response.json() if response.status_code in (200, 202) else {}
        status = job.get("status", f"HTTP {response.status_code}")
        if status == "succeeded":
            latencies.seconds.append(elapsed)
        elif status == "failed":
            status = f"failed ({job['error']['type']})"
        latencies.outcomes[status] += 1


def run_batch(client: httpx.Client, items: int, during: Latencies, pause_s: float) -> BatchRun:
    numbers = list(range(1, items + 1))
    submitted = client.post("/batches", json={"items": [{"question": batch_question(n)} for n in numbers]})
    submitted.raise_for_status()
    batch_id = submitted.json()["id"]
    started = time.monotonic()
    result = BatchRun(items)
    asked = 0
    while True:
        batch = client.get(f"/batches/{batch_id}").json()
        if batch["status"] in ("completed", "cancelled", "failed", "expired"):
            break
        if batch["counts"]["succeeded"] + batch["counts"]["failed"] >= 3:
            interactive(client, [INTERACTIVE_QUESTIONS[asked % len(INTERACTIVE_QUESTIONS)]], during)
            asked += 1
        time.sleep(pause_s)
    result.seconds = time.monotonic() - started
    result.counts = batch["counts"]
    cursor: int | None = 0
    while cursor is not None:
        page = client.get(f"/batches/{batch_id}/results", params={"cursor": cursor, "limit": 1000}).json()
        for item in page["items"]:
            error = item.get("error")
            if error:
                result.failures[error["type"]] += 1
                result.timeouts += error.get("code") == 504
            elif item["result"] and str(2 * numbers[item["index"]]) in str(item["result"].get("answer", "")):
                result.answers_right += 1
        cursor = page["next_cursor"]
    return result


def measure(
    items: int,
    serial_calls: int,
    idle_jobs: int,
    sweep_slots: tuple[int, ...] = (1, 2, 4, 8),
    sweep_threads: tuple[int, ...] = (1, 2),
    sweep_calls_per_slot: int = 4,
    prefill_calls: int = 8,
) -> Results:
    """Every section of the module docstring, each server and stack started and stopped here."""
    from core.settings import Settings

    settings = Settings()
    print("slots and threads", file=sys.stderr)
    sweep = slot_sweep(list(sweep_slots), list(sweep_threads), sweep_calls_per_slot)
    procs: list[Proc] = []
    try:
        lm, lm_base = start_embedded_lm("bench-embedded-lm")
        procs.append(lm)
        caller = QaCaller(lm_base)
        print("prefill, with and without the prefix cache", file=sys.stderr)
        cache = prefill(lm_base, prefill_calls)
        in_prompt = caller.instructions().strip() in built_prompt(lm_base, caller.messages(batch_question(1)))
        print("the model alone, one call at a time", file=sys.stderr)
        serial = run_calls(caller, [batch_question(n) for n in range(1000, 1000 + serial_calls)], 1)
        redis_proc, redis_url = start_redis("bench-embedded-redis")
        if redis_proc is not None:
            procs.append(redis_proc)
        env = {"REDIS_URL": redis_url, "LM_API_BASE": lm_base, "LM_CACHE": "false"}
        concurrency = settings.worker_concurrency
        procs.append(start_worker(env, name="bench-embedded-worker", concurrency=concurrency))
        procs.append(start_worker(env, name="bench-embedded-bulk", queues="bulk", concurrency=concurrency))
        api, api_url = start_api(env, name="bench-embedded-api")
        procs.append(api)
        with httpx.Client(base_url=api_url, timeout=70) as client:
            print("interactive jobs, idle", file=sys.stderr)
            idle = Latencies()
            interactive(client, INTERACTIVE_QUESTIONS[:idle_jobs], idle)
            print(f"a batch of {items}, interactive jobs beside it", file=sys.stderr)
            during = Latencies()
            batch = run_batch(client, items, during, pause_s=2.0)
    finally:
        for proc in reversed(procs):
            proc.stop()
    return Results(
        caller.adapter_name,
        settings.embedded_lm_slots,
        settings.embedded_lm_threads or usable_cores(),
        sweep,
        cache,
        in_prompt,
        serial,
        idle,
        during,
        batch,
    )


def _mean(values: list[float] | list[int]) -> str:
    return f"{sum(values) / len(values):.0f}" if values else "-"


def _sweep_rows(sweep: list[SweepRow]) -> list[list[str]]:
    one_slot = {row.threads: row.run.tokens_per_s for row in sweep if row.slots == 1}
    rows = []
    for row in sweep:
        run, base = row.run, one_slot.get(row.threads)
        latency = run.latency
        rows.append(
            [
                str(row.slots),
                str(row.threads),
                str(len(run.calls)),
                f"{run.tokens_per_s:.1f}",
                f"{run.tokens_per_s / base:.2f}" if base else "-",
                f"{run.items_per_s:.3f}",
                f"{latency.p50:.1f}" if latency else "-",
                f"{latency.p99:.1f}" if latency else "-",
                f"{run.parsed}/{len(run.calls)}",
                _outcomes(run.failures),
            ]
        )
    return rows


def targets(r: Results) -> list[str]:
    """Issue #26's targets, each as measured here."""
    batch, serial = r.batch, r.serial
    speedup = batch.items_per_s / serial.items_per_s if serial.items_per_s else 0.0
    parsed = batch.counts.get("succeeded", 0) / batch.items if batch.items else 0.0
    idle_p99 = Dist.of(r.idle.seconds).p99 if r.idle.seconds else float("nan")
    during_p99 = Dist.of(r.during.seconds).p99 if r.during.seconds else float("nan")
    p99_ratio = during_p99 / idle_p99 if idle_p99 == idle_p99 and idle_p99 > 0 else float("nan")
    rows = [
        ["batch items/s over one call at a time", f">= {BATCH_SPEEDUP_TARGET}", f"{speedup:.2f}"],
        ["timeouts (504) in the batch", "0", str(batch.timeouts)],
        ["batch items parsed", f">= {PARSED_TARGET:.0%}", f"{parsed:.1%}"],
        ["interactive p99 during the batch over idle", f"<= {INTERACTIVE_P99_TARGET}", f"{p99_ratio:.2f}"],
    ]
    met = [
        speedup >= BATCH_SPEEDUP_TARGET,
        batch.timeouts == 0,
        parsed >= PARSED_TARGET,
        p99_ratio <= INTERACTIVE_P99_TARGET,
    ]
    return table(
        ["target", "wanted", "measured", ""],
        [[*row, "met" if ok else "**not met**"] for row, ok in zip(rows, met, strict=True)],
    )


def section(r: Results) -> list[str]:
    """The results' tables, for this module's page and for BENCHMARKS.md."""
    serial, batch = r.serial, r.batch
    served = batch.items + sum(r.during.outcomes.values())
    served_per_s = served / batch.seconds if batch.seconds else 0.0
    without, with_cache = r.prefill
    return [
        f"The embedded model: llama.cpp's server over Gemma 3 270M, `LM_ADAPTER` {r.adapter}. `make up`'s "
        f"server has {r.slots} slots and {r.threads} threads (`EMBEDDED_LM_SLOTS`, `EMBEDDED_LM_THREADS`); "
        "the service runs one interactive and one bulk worker and the API with `make up`'s defaults, on a "
        "private redis-server.",
        "",
        "**Slots.** A server per row, kept full: the `qa` program called directly with as many calls in flight "
        "as slots, after each slot prefilled the program's prefix once. Tokens are the completion tokens of "
        "calls that parsed.",
        "",
        *table(
            [
                "slots",
                "threads",
                "calls",
                "tokens/s",
                "vs 1 slot",
                "items/s",
                "latency p50 (s)",
                "latency p99 (s)",
                "parsed",
                "failures",
            ],
            _sweep_rows(r.sweep),
        ),
        "",
        "**Prefill** of a `qa` call on `make up`'s server, the server's own timing, different questions one "
        f"after the other ({len(without.prompt_ms)} calls each); with the cache, the call that filled it is "
        "left out. DSPy's instructions are in the prompt the server builds: "
        f"{'yes' if r.instructions_in_prompt else '**no**'}.",
        "",
        *table(
            ["prefix cache", "prefill per call (ms)", "prompt tokens evaluated per call", "taken from the cache"],
            [
                [
                    "on" if p.cache else "off",
                    _mean(p.prompt_ms),
                    _mean(p.evaluated_tokens),
                    _mean(p.cached_tokens),
                ]
                for p in (without, with_cache)
            ],
        ),
        "",
        f'**The batch**: "What is N plus N?" for N = 1..{batch.items} through the service, interactive jobs '
        "(`POST /jobs?wait=60`) submitted one at a time while it ran, against the same program on `make up`'s "
        f"server called directly, one call at a time ({len(serial.calls)} calls).",
        "",
        *table(
            ["", "items", "items/s", "vs one at a time", "parsed", "answer right", "timeouts (504)", "failures"],
            [
                [
                    "the model, one call at a time",
                    len(serial.calls),
                    f"{serial.items_per_s:.3f}",
                    "1.00",
                    f"{serial.parsed}/{len(serial.calls)}",
                    "-",
                    "-",
                    _outcomes(serial.failures),
                ],
                [
                    f"a batch of {batch.items} through the service",
                    batch.items,
                    f"{batch.items_per_s:.3f}",
                    f"{batch.items_per_s / serial.items_per_s:.2f}" if serial.items_per_s else "-",
                    f"{batch.counts.get('succeeded', 0)}/{batch.items}",
                    f"{batch.answers_right}/{batch.items}",
                    str(batch.timeouts),
                    _outcomes(batch.failures),
                ],
                [
                    "all the LM served meanwhile: the batch and the interactive jobs beside it",
                    served,
                    f"{served_per_s:.3f}",
                    f"{served_per_s / serial.items_per_s:.2f}" if serial.items_per_s else "-",
                    "-",
                    "-",
                    "-",
                    "-",
                ],
            ],
        ),
        "",
        "*Parsed*: the program returned a prediction (no `AdapterParseError`). *Answer right*: the answer "
        "contains 2N (the 270M base model's arithmetic, not the service's). Interactive jobs go first and "
        "bulk leaves them a slot, so the batch's own rate is what they leave it; the last row is the LM's "
        "whole use.",
        "",
        "Interactive jobs, one at a time:",
        "",
        *table(
            ["", "jobs", "p50 (s)", "p99 (s)", "outcomes"],
            [["idle", *r.idle.row()], ["during the batch", *r.during.row()]],
        ),
        "",
        "Issue #26's targets:",
        "",
        *targets(r),
        "",
    ]


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.embedded", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=200, help="items in the batch")
    parser.add_argument("--serial-calls", type=int, default=20, help="direct calls, one at a time")
    parser.add_argument("--idle-jobs", type=int, default=8, help="interactive jobs on the idle service")
    parser.add_argument("--slots", type=_counts, default=(1, 2, 4, 8), help="slot counts to sweep, e.g. 1,2,4,8")
    parser.add_argument("--threads", type=_counts, default=(1, 2), help="thread counts to sweep, e.g. 1,2")
    parser.add_argument("--sweep-calls", type=int, default=4, help="calls per slot in each sweep row")
    parser.add_argument("--prefill-calls", type=int, default=8, help="calls with and without the prefix cache")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    # So that a SIGTERM still runs `measure`'s `finally` and stops every process it started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.monotonic()
    results = measure(
        args.items,
        args.serial_calls,
        args.idle_jobs,
        args.slots,
        args.threads,
        args.sweep_calls,
        args.prefill_calls,
    )
    lines = [
        "# The embedded default, from its server's slots to a batch",
        "",
        "```sh",
        command_line("bench.embedded"),
        "```",
        "",
        f"- Run: {started:%Y-%m-%d %H:%M:%S} UTC, took {(time.monotonic() - t0) / 60:.1f} min",
        f"- Code: {git_state()}",
        *[f"- {what}: {value}" for what, value in machine()],
        "- Packages: " + ", ".join(f"{name} {version}" for name, version in versions(PACKAGES)),
        "",
        *section(results),
    ]
    text = "\n".join(lines)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
