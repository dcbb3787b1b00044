"""What a suite run measured (`Results`), the issue's targets as measured, and the notes the report adds."""

import argparse
import datetime
from dataclasses import dataclass, field

from bench import embedded as embedded_bench
from bench.report import ms, ratio, table
from bench.scenarios.capacity import Capacity, SseMemory
from bench.scenarios.closed_loop import LoopResult
from bench.scenarios.common import BASE, OURS, OURS_STREAMING, SYSTEMS, LMTiming
from bench.scenarios.profiling import Profile
from bench.scenarios.ttft import Ttft
from harness.processes import ARTIFACTS


@dataclass
class Results:
    args: argparse.Namespace
    started: datetime.datetime
    chunks: int
    realistic: list[LoopResult] = field(default_factory=list)
    overhead: list[LoopResult] = field(default_factory=list)  # the median round of overhead_rounds
    overhead_rounds: list[list[LoopResult]] = field(default_factory=list)
    capacity: Capacity | None = None
    sse: SseMemory | None = None
    ttft: Ttft | None = None
    embedded: embedded_bench.Results | None = None
    profiles: list[Profile] = field(default_factory=list)
    idle_rss: dict[str, int] = field(default_factory=dict)
    idle_cores: dict[str, float] = field(default_factory=dict)  # CPU of each process with nothing to do
    worker_log_problems: list[tuple[str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    code: str = ""


def find_run(results: list[LoopResult], system: str, clients: int) -> LoopResult | None:
    return next((r for r in results if r.system == system and r.run.clients == clients), None)


def cpu_ratio(results: list[LoopResult], system: str = OURS) -> float:
    """CPU per job of `system` over the baseline's, in one round of scenario 2."""
    ours = next(r for r in results if r.system == system)
    base = next(r for r in results if r.system == BASE)
    return ours.cpu_per_job_s / base.cpu_per_job_s if base.cpu_per_job_s else float("nan")


def median_round(rounds: list[list[LoopResult]]) -> list[LoopResult]:
    """The round whose ours / baseline CPU ratio is the median (the lower middle one of an even count)."""
    ranked = sorted(rounds, key=cpu_ratio)
    return ranked[(len(ranked) - 1) // 2]


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def _lm_pace(clients: int, timing: LMTiming, chunks: int) -> float:
    """Jobs/s that `clients` closed-loop clients could complete if only the LM's time counted."""
    return clients / timing.answer_s(chunks)


def targets(res: Results) -> list[str]:
    """Issue #30's targets, each as measured: streaming (the default) and not streaming at the LM's pace, CPU
    per job against the direct app, time to first token."""
    rows: list[list[str]] = []
    for clients in (200, 1000):
        ours, streaming, base = (find_run(res.realistic, system, clients) for system in SYSTEMS)
        if not (ours and streaming and base):
            rows.append([f"Scenario 1 at {clients} clients", "not run", "**not measured**"])
            continue
        pace = _lm_pace(clients, ours.lm_timing, ours.chunks)
        failures = sum(r.run.failures.total() + r.run.unfinished for r in (ours, streaming))
        rows.append(
            [
                f"{clients} clients on the {ours.lm_timing.answer_s(ours.chunks):.2f} s LM: ours ≥ 0.9x the LM's "
                f"pace ({pace:.0f} jobs/s), streaming and not" + (", no errors" if clients == 1000 else ""),
                f"streaming (the default) {streaming.run.throughput:.1f} jobs/s = "
                f"{streaming.run.throughput / pace:.2f}x, not streaming {ours.run.throughput:.1f} = "
                f"{ours.run.throughput / pace:.2f}x (baseline {base.run.throughput:.1f} = "
                f"{base.run.throughput / pace:.2f}x); errors {failures}",
                _verdict(min(streaming.run.throughput, ours.run.throughput) >= 0.9 * pace and not failures),
            ]
        )
        if clients == 200:
            rows.append(
                [
                    "Added latency p50 ≤ 20 ms (200 clients), streaming and not",
                    f"streaming {ms(streaming.added.p50)} ms, not streaming {ms(ours.added.p50)} ms (baseline "
                    f"{ms(base.added.p50)} ms)",
                    _verdict(max(streaming.added.p50, ours.added.p50) <= 0.020),
                ]
            )
    clients = res.args.overhead_clients
    ours, streaming, base = (find_run(res.overhead, system, clients) for system in SYSTEMS)
    if ours and streaming and base:
        each = ", ".join(f"{cpu_ratio(r):.2f} / {cpu_ratio(r, OURS_STREAMING):.2f}" for r in res.overhead_rounds)
        measured, measured_streaming = cpu_ratio(res.overhead), cpu_ratio(res.overhead, OURS_STREAMING)
        rows.append(
            [
                "Pure overhead (LM answers at once): worker + API + Redis CPU per job ≤ 2.0x the direct app's, "
                "streaming ≤ 2.5x; Redis commands per job",
                f"{measured:.2f}x, streaming {measured_streaming:.2f}x, the median of {len(res.overhead_rounds)} "
                f"round(s) (not streaming / streaming: {each}); ours {ours.cpu_per_job_s * 1000:.2f} ms, streaming "
                f"{streaming.cpu_per_job_s * 1000:.2f} ms, the direct app {base.cpu_per_job_s * 1000:.2f} ms per "
                f"job; Redis commands per job {ours.redis_commands_per_job:.0f}, streaming "
                f"{streaming.redis_commands_per_job:.0f}",
                _verdict(measured <= 2.0 and measured_streaming <= 2.5),
            ]
        )
    else:
        rows.append(["Pure overhead, CPU per job", "not run", "**not measured**"])
    ours, streaming, base = (find_run(res.realistic, system, 50) for system in SYSTEMS)
    if ours and streaming and base:
        rows.append(
            [
                "CPU per job at 50 clients (the LM the limit) ≤ 2.5x the direct app's, idle loops included",
                f"streaming (the default) {ratio(streaming.cpu_per_job_s, base.cpu_per_job_s)}x, not streaming "
                f"{ratio(ours.cpu_per_job_s, base.cpu_per_job_s)}x ({streaming.cpu_per_job_s * 1000:.1f}, "
                f"{ours.cpu_per_job_s * 1000:.1f} and {base.cpu_per_job_s * 1000:.1f} ms)",
                _verdict(max(streaming.cpu_per_job_s, ours.cpu_per_job_s) <= 2.5 * base.cpu_per_job_s),
            ]
        )
    else:
        rows.append(["Scenario 1 at 50 clients", "not run", "**not measured**"])
    if res.ttft and res.ttft.jobs:
        t = res.ttft
        rows.append(
            [
                "SSE time to first token: ≤ 10 ms over the LM's own, p50",
                f"+{ms(t.added.p50)} ms (p99 +{ms(t.added.p99)} ms; client {ms(t.client.p50)} ms, "
                f"LM {ms(t.lm.p50)} ms)",
                _verdict(t.added.p50 <= 0.010),
            ]
        )
    else:
        rows.append(["SSE time to first token", "not run", "**not measured**"])
    return table(["target", "measured", "verdict"], rows)


# What the worker's log must not show after a run: (pattern, what it means).
WORKER_LOG_PROBLEMS = [
    ("MaxConnectionsError: Too many connections", "`MaxConnectionsError` (the worker's Redis pool ran dry)"),
    ("raised unexpected", "tasks that raised"),
    ("lost its worker", "jobs requeued by the reaper"),
    (
        "RuntimeError: Attempted to exit cancel scope in a different task",
        "anyio cancel-scope errors (they follow running jobs being cancelled, as the cleanup after a run does)",
    ),
]


def worker_log_problems() -> list[tuple[str, int]]:
    """Counts of known problems in the worker's log of this run (the last section of its log file)."""
    path = ARTIFACTS / "bench-suite-worker.log"
    if not path.exists():
        return []
    run = path.read_text(errors="replace").split("\n==== ")[-1]
    return [(what, run.count(pattern)) for pattern, what in WORKER_LOG_PROBLEMS if pattern in run]


def automatic_notes(res: Results) -> list[str]:
    notes = []
    if res.worker_log_problems:
        notes.append(
            "The worker's log for this run (`test-artifacts/bench-suite-worker.log`, last section) shows: "
            + ", ".join(f"{n} x {what}" for what, n in res.worker_log_problems)
            + "."
        )
    for r in res.realistic:
        if r.system == BASE and r.run.clients >= 200 and r.max_lm_in_flight < 0.6 * r.run.clients:
            notes.append(
                f"The baseline never had more than {r.max_lm_in_flight} LM calls open at once with "
                f"{r.run.clients} clients (simulator's records), so its throughput is capped near "
                f"{r.max_lm_in_flight} / LM time per answer. DSPy's native engine (lm15), which `LM_ENGINE=auto` "
                f"picks for this model, pools at most 100 connections per client "
                f"(`dspy/_vendor/lm15/transports/_limits.py`, `DEFAULT_MAX_CONNECTIONS`); the worker raises that "
                f"cap to the LM's limit (`patches/lm15_connections.py`)."
            )
            break
    ours = find_run(res.overhead, OURS, res.args.overhead_clients)
    base = find_run(res.overhead, BASE, res.args.overhead_clients)
    if ours and base and ours.completed and base.completed:
        api_ms = ours.cpu.roles["api"] / ours.completed * 1000
        base_ms = base.cpu_per_job_s * 1000
        notes.append(
            f"Pure overhead, what the 2x target leaves room for: our API process alone (HTTP, validation, "
            f"one script to store and enqueue, the wait for the finished notice; it never runs the program) used "
            f"{api_ms:.2f} ms per job, {api_ms / base_ms:.2f}x the baseline's whole process ({base_ms:.2f} ms, "
            f"which answers HTTP *and* runs the program). The worker runs the same program call as the baseline "
            f"on top of that, so a front process separate from the workers takes most of the 2x allowance by "
            f"itself, before any queue."
        )
    busy = [r for r in [*res.realistic, *res.overhead] if r.cpu.cores("other") > 0.3]
    if busy:
        notes.append(
            "The machine was shared with other work during "
            + ", ".join(f"{r.system} x{r.run.clients} ({r.cpu.cores('other'):.2f} cores)" for r in busy)
            + ": those runs had less than 2 cores to themselves."
        )
    notes.append(
        "The LM simulator is a Python process on the same 2 cores; streaming 62 chunks costs it more CPU per "
        "job than answering at once (its CPU is in the *LM sim* column and not counted as the system's)."
    )
    return notes
