"""The embedded default under a batch: `python -m bench.embedded [--items 200] [--output ...]`.

What a new user gets from `make up` with no settings: the embedded model
(llama.cpp serving Gemma 3 270M on this machine's cores), one interactive
worker, one bulk worker and the API, all with their defaults. Measured in one
run, side by side:

1. **The server alone, serially**: the `qa` program called directly (DSPy,
   the same LM settings and adapter as the workers), one call at a time, on
   questions like the batch's: items/s and parse rate. This is what the
   model can do; the service cannot beat it, only waste it.
2. **Interactive jobs on an idle service**: `POST /jobs?wait=60`, one at a time.
3. **A batch of `--items` items** ("What is N plus N?"), and interactive jobs
   submitted one at a time while it runs: the batch's items/s against the
   serial figure, its timeouts (`LMTimeoutError`, code 504: there must be
   none), its parse rate, and interactive latency during the batch against
   idle.

Writes the results, with the machine and the command, to `--output`
(`bench/results/embedded.md`); `python -m bench` includes them in
BENCHMARKS.md. Logs: `test-artifacts/bench-embedded-*.log`.
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

from bench.report import ROOT, Dist, command_line, git_state, machine, table, versions
from harness.processes import Proc, free_port, python_module, start_api, start_redis, start_worker, wait_for

OUTPUT = ROOT / "bench" / "results" / "embedded.md"
PACKAGES = ["dspy", "litellm", "llama-cpp-python", "celery", "redis", "fastapi"]
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


def batch_question(n: int) -> str:
    return f"What is {n} plus {n}?"


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
class Serial:
    calls: int = 0
    parsed: int = 0
    seconds: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def items_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


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


def _outcomes(outcomes: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in outcomes.most_common()) or "-"


def serial_baseline(lm_base: str, calls: int) -> Serial:
    """The `qa` program called directly, one call at a time, as the worker would call it."""
    from core.offline import disable_runtime_downloads

    disable_runtime_downloads()
    import dspy

    from core.programs import parse_artifact
    from core.settings import Settings
    from program.lm import build_adapter, build_lm
    from program.registry import program_specs

    settings = Settings(lm_api_base=lm_base, lm_cache=False)
    spec = program_specs(settings)["qa"]
    module = spec.build()
    state, _ = parse_artifact(spec.name, spec.artifact, spec.artifact.read_bytes())
    module.load_state(state)
    module.set_lm(None)
    lm, adapter = build_lm(settings), build_adapter(settings)
    result = Serial()
    started = time.monotonic()
    for n in range(1000, 1000 + calls):
        with dspy.context(lm=lm, adapter=adapter, disable_history=True, trace=None):
            try:
                module(question=batch_question(n))
                result.parsed += 1
            except Exception as e:
                result.failures[type(e).__name__] += 1
        result.calls += 1
    result.seconds = time.monotonic() - started
    return result


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


@dataclass
class Results:
    adapter: str
    serial: Serial
    idle: Latencies
    during: Latencies
    batch: BatchRun


def measure(items: int, serial_calls: int, idle_jobs: int) -> Results:
    """Start the embedded server and the service with `make up`'s defaults, measure, stop everything."""
    from core.settings import Settings
    from program.lm import adapter_name

    procs: list[Proc] = []
    try:
        redis_proc, redis_url = start_redis("bench-embedded-redis")
        if redis_proc is not None:
            procs.append(redis_proc)
        port = free_port()
        lm_base = f"http://127.0.0.1:{port}/v1"
        lm = Proc("bench-embedded-lm", python_module("stack.embedded_lm", "--port", str(port)), {})
        procs.append(lm)
        wait_for(lambda: httpx.get(f"{lm_base}/models").status_code == 200, 300, "the embedded LM", lm)
        print("the server alone, serially", file=sys.stderr)
        serial = serial_baseline(lm_base, serial_calls)
        env = {"REDIS_URL": redis_url, "LM_API_BASE": lm_base, "LM_CACHE": "false"}
        concurrency = str(Settings.model_fields["worker_concurrency"].default)
        procs.append(start_worker(env, name="bench-embedded-worker", concurrency=int(concurrency)))
        procs.append(start_worker(env, name="bench-embedded-bulk", queues="bulk", concurrency=int(concurrency)))
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
    return Results(adapter_name(Settings()), serial, idle, during, batch)


def section(r: Results) -> list[str]:
    """The results' tables, for this module's page and for BENCHMARKS.md."""
    serial, batch = r.serial, r.batch
    served = batch.items + sum(r.during.outcomes.values())
    served_per_s = served / batch.seconds if batch.seconds else 0.0
    return [
        f"The embedded model (llama-cpp-python's server over Gemma 3 270M, LM limit 1, `LM_ADAPTER` {r.adapter}), "
        "one interactive and one bulk worker and the API with `make up`'s defaults, a private redis-server. "
        f"*The server alone*: the `qa` program called directly, {serial.calls} calls one at a time, the same LM "
        f'settings and adapter as the workers. *The batch*: "What is N plus N?" for N = 1..{batch.items}, '
        "interactive jobs (`POST /jobs?wait=60`) submitted one at a time while it ran.",
        "",
        *table(
            ["", "items", "items/s", "vs the server alone", "parsed", "answer right", "timeouts (504)", "failures"],
            [
                [
                    "the server alone, one call at a time",
                    serial.calls,
                    f"{serial.items_per_s:.3f}",
                    "1.00",
                    f"{serial.parsed}/{serial.calls}",
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
        "contains 2N (the 270M base model's arithmetic, not the service's). Interactive jobs go first, so the "
        "batch's own rate is what they leave it; the last row is the LM's whole use.",
        "",
        "Interactive jobs, one at a time:",
        "",
        *table(
            ["", "jobs", "p50 (s)", "p99 (s)", "outcomes"],
            [["idle", *r.idle.row()], ["during the batch", *r.during.row()]],
        ),
        "",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.embedded", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=200, help="items in the batch")
    parser.add_argument("--serial-calls", type=int, default=20, help="direct calls for the serial baseline")
    parser.add_argument("--idle-jobs", type=int, default=8, help="interactive jobs on the idle service")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    # So that a SIGTERM still runs `measure`'s `finally` and stops every process it started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.monotonic()
    results = measure(args.items, args.serial_calls, args.idle_jobs)
    lines = [
        "# The embedded default under a batch",
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
