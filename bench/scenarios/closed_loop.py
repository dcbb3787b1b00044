"""Scenarios 1 and 2: closed-loop clients against one system, and what the LM's records say of each request."""

import asyncio
import datetime
from dataclasses import dataclass, field
from typing import Any

from bench import load
from bench.report import CpuDelta, CpuSnapshot, Dist, ms
from bench.scenarios.common import (
    BASE,
    BASE_PATH,
    NOT_SYSTEM,
    OURS_PATH,
    LMTiming,
    answer_chunks,
    body_extra,
    log,
    max_overlap,
)
from bench.scenarios.stack import Stack, wait_quiet


@dataclass
class LoopResult:
    system: str
    run: load.LoadRun
    cpu: CpuDelta
    lm_timing: LMTiming
    chunks: int
    other_before: float
    e2e: Dist = field(default_factory=lambda: Dist.of([]))
    lm_time: Dist = field(default_factory=lambda: Dist.of([]))  # the LM's own time per request
    added: Dist = field(default_factory=lambda: Dist.of([]))  # e2e minus the LM's own time
    to_lm: Dist = field(default_factory=lambda: Dist.of([]))  # submit -> the LM received the request
    from_lm: Dist = field(default_factory=lambda: Dist.of([]))  # the LM's last chunk -> the client has the answer
    queue_wait: Dist = field(default_factory=lambda: Dist.of([]))  # job created -> a worker started it
    start_to_lm: Dist = field(default_factory=lambda: Dist.of([]))  # a worker started it -> the LM has the request
    unmatched: int = 0  # ok requests with no LM record
    events_per_job: float = float("nan")  # ours: events in a finished job's log (status, tokens, result)
    max_lm_in_flight: int = 0  # most LM requests open at once during the run (the simulator's records)
    redis_commands: int = 0  # ours: Redis commands in the measured window (INFO commandstats)
    settle_note: str = ""

    @property
    def completed(self) -> int:
        return len(self.run.ok)

    @property
    def system_cpu_s(self) -> float:
        return sum(v for k, v in self.cpu.roles.items() if k not in NOT_SYSTEM)

    @property
    def redis_commands_per_job(self) -> float:
        return self.redis_commands / self.completed if self.completed and self.redis_commands else float("nan")

    @property
    def cpu_per_job_s(self) -> float:
        return self.system_cpu_s / self.completed if self.completed else float("nan")


def _parse_time(value: str | None) -> float | None:
    return datetime.datetime.fromisoformat(value).timestamp() if value else None


def analyse(result: LoopResult, lm: dict[str, dict[str, Any]]) -> None:
    ok = result.run.ok
    configured = result.lm_timing.answer_s(result.chunks)
    e2e, lm_times, added, to_lm, from_lm, queue_wait, start_to_lm = [], [], [], [], [], [], []
    for s in ok:
        total = s.end - s.start
        e2e.append(total)
        entry = lm.get(s.question)
        if entry is None:
            result.unmatched += 1
            continue
        chunk_times: list[float] = entry["chunk_times"]
        # Streamed (ours): the simulator's own clock, request received -> last chunk handed over.
        # Not streamed (the baseline): it does not record when it answered; its configured sleep.
        lm_s = chunk_times[-1] - entry["at"] if chunk_times else configured
        lm_end = chunk_times[-1] if chunk_times else entry["at"] + configured
        lm_times.append(lm_s)
        added.append(total - lm_s)
        to_lm.append(entry["at"] - s.start)
        from_lm.append(s.end - lm_end)
        if s.job is not None:
            created, started = _parse_time(s.job.get("created_at")), _parse_time(s.job.get("started_at"))
            if created is not None and started is not None:
                queue_wait.append(started - created)
                start_to_lm.append(entry["at"] - started)
    intervals = []
    for s in result.run.samples:
        entry = lm.get(s.question)
        if entry is not None:
            times = entry["chunk_times"]
            intervals.append((entry["at"], times[-1] if times else entry["at"] + configured))
    result.max_lm_in_flight = max_overlap(intervals)[0]
    result.e2e, result.lm_time, result.added = Dist.of(e2e), Dist.of(lm_times), Dist.of(added)
    result.to_lm, result.from_lm, result.queue_wait = Dist.of(to_lm), Dist.of(from_lm), Dist.of(queue_wait)
    result.start_to_lm = Dist.of(start_to_lm)


async def closed_loop(
    stack: Stack, system: str, clients: int, warmup_s: float, duration_s: float, drain_s: float, quiet_s: float
) -> LoopResult:
    other = await asyncio.to_thread(wait_quiet, stack, quiet_s)
    await asyncio.to_thread(stack.clear_lm)
    roles = stack.roles(system)
    marks: dict[str, CpuSnapshot] = {}
    commands: dict[str, int] = {}

    def on_mark(what: str) -> None:
        marks[what] = CpuSnapshot.take(roles)
        if system != BASE:
            commands[what] = stack.redis_commands()

    run = await load.closed_loop(
        f"{system} x{clients}",
        "127.0.0.1",
        stack.port(system),
        BASE_PATH if system == BASE else OURS_PATH,
        load.classify_predict if system == BASE else load.classify_job,
        clients,
        warmup_s,
        duration_s,
        request_timeout_s=75.0,
        drain_s=drain_s,
        ramp_s=min(2.0, warmup_s / 2),
        on_mark=on_mark,
        body_extra=body_extra(system),
    )
    cpu = marks["end"].since(marks["start"])
    lm = await asyncio.to_thread(stack.lm_requests)
    result = LoopResult(system, run, cpu, stack.lm_timing, answer_chunks(), other)
    if commands:
        result.redis_commands = commands["end"] - commands["start"]
    analyse(result, lm)
    if system != BASE:
        result.events_per_job = await asyncio.to_thread(stack.events_per_job, run.ok[:500])
    result.settle_note = await asyncio.to_thread(stack.settle, True) if system != BASE else ""
    await asyncio.to_thread(stack.clear_lm)
    failures = ", ".join(f"{n} {why}" for why, n in run.failures.most_common()) or "no failures"
    log(
        f"{system} x{clients}: {run.throughput:.1f} jobs/s, e2e p50 {ms(result.e2e.p50)} p99 {ms(result.e2e.p99)} ms, "
        f"added p50 {ms(result.added.p50)} p99 {ms(result.added.p99)} ms; {failures}; unfinished {run.unfinished}; "
        f"machine {cpu.cores('machine'):.2f} cores, other {cpu.cores('other'):.2f}"
    )
    return result
