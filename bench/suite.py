"""The benchmark suite: our job service side by side with the direct-call baseline.

    .venv/bin/python -m bench [--quick] [--no-profile] [--output BENCHMARKS.md]

Starts everything it needs on 127.0.0.1 (a private redis-server, the scripted
LM `stack/lm_simulator.py` restarted with each scenario's `--ttft-s` and
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
5. The embedded default under a batch (bench/embedded.py), on a stack of its
   own: the server alone, serially, against a 200-item batch through the
   service, and interactive latency during it.
Then, when py-spy is available, a profile of the worker and the API under
scenario 2's load.
"""

import argparse
import asyncio
import contextlib
import datetime
import json
import linecache
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis

from bench import embedded as embedded_bench
from bench import load
from bench.report import (
    ROOT,
    CpuDelta,
    CpuSnapshot,
    Dist,
    command_line,
    find_py_spy,
    git_state,
    machine,
    mib,
    ms,
    proc_rss_bytes,
    proc_threads,
    raise_fd_limit,
    ratio,
    socket_inodes,
    table,
    versions,
)
from bench.report import established_to_port as established
from core import keys
from core.queue import make_celery
from core.settings import Settings
from stack.lm_simulator import _apply_stop, _tokens, scripted_answer
from stack.processes import ARTIFACTS, Proc, free_port, python_module, start_api, start_redis, start_worker, wait_for

OUTPUT = ROOT / "BENCHMARKS.md"
SSE_RESULTS = ROOT / "bench" / "results" / "sse.md"
PACKAGES = [
    "dspy",
    "litellm",
    "openai",
    "celery",
    "kombu",
    "redis",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "sse-starlette",
    "pydantic",
    "aiohttp",
    "httpx",
]
QA_FIELDS = ["reasoning", "answer", "key_concepts", "question_type"]
COMPLETION_MARKER = "[[ ## completed ## ]]"
T = TypeVar("T")

# Systems compared: ours without and with token streaming (the `stream` field of
# `POST /jobs`), and the direct-call baseline.
OURS, OURS_STREAMING, BASE = "ours", "ours, streaming", "baseline"
SYSTEMS = (OURS, OURS_STREAMING, BASE)
NOT_SYSTEM = ("lm", "client", "idle")  # CPU roles that are not the system under test
OURS_PATH = "/jobs?wait=60"
BASE_PATH = "/predict"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def answer_chunks() -> int:
    """Chunks (tokens) the scripted LM sends for a bench question to the `qa` program."""
    text = _apply_stop(scripted_answer(load.new_question(), QA_FIELDS), [COMPLETION_MARKER])
    return len(_tokens(text))


@dataclass(frozen=True)
class LMTiming:
    ttft_s: float
    tokens_per_s: float

    def answer_s(self, chunks: int) -> float:
        """The LM's configured time for a whole answer (what a non-streamed request sleeps)."""
        return self.ttft_s + (chunks / self.tokens_per_s if self.tokens_per_s > 0 else 0.0)

    def __str__(self) -> str:
        return f"`--ttft-s {self.ttft_s:g} --tokens-per-s {self.tokens_per_s:g}`"


# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------


class Stack:
    """Every process the suite measures, started once; the LM simulator restarts per scenario."""

    def __init__(self, concurrency: int, workers: int = 1, extra_env: dict[str, str] | None = None) -> None:
        self.concurrency = concurrency
        self.worker_count = workers
        self.extra_env = extra_env or {}
        self.procs: list[Proc] = []
        self.redis_proc: Proc | None = None
        self.redis_url = ""
        self.lm_port = free_port()
        self.lm: Proc | None = None
        self.lm_timing = LMTiming(0.0, 0.0)
        self.worker: Proc | None = None  # the first worker process: scenario 3 measures it alone
        self.workers: list[Proc] = []
        self.api: Proc | None = None
        self.api_port = 0
        self.baseline: Proc | None = None
        self.baseline_port = 0
        self.celery: Any = None
        self.redis: redis.Redis | None = None
        self.worker_rss_started = 0
        self.api_rss_started = 0
        self.baseline_rss_started = 0

    @property
    def lm_base(self) -> str:
        return f"http://127.0.0.1:{self.lm_port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "REDIS_URL": self.redis_url,
            "LM_MODEL": "openai/simulated",
            "LM_API_BASE": f"{self.lm_base}/v1",
            "LM_CACHE": "false",
            "WORKER_CONCURRENCY": str(self.concurrency),
            **self.extra_env,
        }

    def start(self, timing: LMTiming) -> None:
        self.redis_proc, self.redis_url = start_redis("bench-suite-redis")
        if self.redis_proc is None:
            raise RuntimeError("the benchmark needs redis-server on PATH (it measures a private one)")
        self.procs.append(self.redis_proc)
        self.redis = redis.Redis.from_url(self.redis_url, decode_responses=True)
        self.start_lm(timing)
        log("starting the worker, the API and the baseline")
        for i in range(self.worker_count):
            name = "bench-suite-worker" + (f"-{i + 1}" if i else "")
            self.workers.append(start_worker(self.env, name=name, concurrency=self.concurrency))
        self.procs += self.workers
        self.worker = self.workers[0]
        self.api, api_url = start_api(self.env, name="bench-suite-api")
        self.procs.append(self.api)
        self.api_port = int(api_url.rsplit(":", 1)[1])
        self.baseline_port = free_port()
        self.baseline = Proc(
            "bench-suite-baseline",
            python_module(
                "uvicorn",
                "bench.baseline_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.baseline_port),
                "--log-level",
                "warning",
            ),
            self.env,
        )
        self.procs.append(self.baseline)
        base = f"http://127.0.0.1:{self.baseline_port}"
        wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, 60, "baseline", self.baseline)
        self.celery = make_celery(Settings(redis_url=self.redis_url))
        self.worker_rss_started = proc_rss_bytes(self.worker.pid)
        self.api_rss_started = proc_rss_bytes(self.api.pid)
        self.baseline_rss_started = proc_rss_bytes(self.baseline.pid)
        log("priming both systems")
        self.prime()

    def prime(self, requests: int = 3) -> None:
        """A few requests through each system: the first LM call of a process loads a lot lazily."""
        for _ in range(requests):
            for system in SYSTEMS:
                url = f"http://127.0.0.1:{self.port(system)}{BASE_PATH if system == BASE else OURS_PATH}"
                body = {"question": load.new_question(), **body_extra(system)}
                with contextlib.suppress(httpx.HTTPError):
                    httpx.post(url, json=body, timeout=70)
        self.clear_lm()

    def start_lm(self, timing: LMTiming) -> None:
        if self.lm is not None:
            self.lm.stop()
            self.procs.remove(self.lm)
        args = ["--port", str(self.lm_port), "--ttft-s", str(timing.ttft_s), "--tokens-per-s", str(timing.tokens_per_s)]
        self.lm = Proc("bench-suite-lm", python_module("stack.lm_simulator", *args), {})
        self.procs.append(self.lm)
        wait_for(lambda: httpx.get(f"{self.lm_base}/health").status_code == 200, 30, "LM simulator", self.lm)
        self.lm_timing = timing
        if self.api_port and self.baseline_port:
            self.prime(1)  # pooled connections to the old simulator are gone: let each system find out now

    def stop(self) -> None:
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception as e:  # stop the others anyway
                log(f"could not stop {proc.name}: {e}")

    def roles(self, system: str) -> dict[str, list[int]]:
        """CPU roles: the system under test's processes, the LM, this process (the clients), and the other
        system (`idle`: it is idle meanwhile, and its CPU must not pass for load from outside the benchmark)."""
        assert self.api and self.worker and self.redis_proc and self.baseline and self.lm
        ours = {"api": [self.api.pid], "worker": [w.pid for w in self.workers], "redis": [self.redis_proc.pid]}
        base = {"baseline": [self.baseline.pid]}
        mine, idle = (base, ours) if system == BASE else (ours, base)
        return {**mine, "lm": [self.lm.pid], "client": [os.getpid()], "idle": [p for ps in idle.values() for p in ps]}

    def port(self, system: str) -> int:
        return self.baseline_port if system == BASE else self.api_port

    # -- the LM's records ---------------------------------------------------------------------

    def lm_requests(self) -> dict[str, dict[str, Any]]:
        """What reached the LM since the last clear, by question (the last request of each)."""
        entries = httpx.get(f"{self.lm_base}/_requests", timeout=60).json()
        return {e["question"]: e for e in entries}

    def clear_lm(self) -> None:
        httpx.delete(f"{self.lm_base}/_requests", timeout=30)

    # -- queue control --------------------------------------------------------------------------

    def consume(self, on: bool, workers: list[Proc] | None = None) -> None:
        """Let the workers (all by default) consume the interactive queue, or stop them (jobs then stay queued)."""
        control = self.celery.control
        call = control.add_consumer if on else control.cancel_consumer
        for worker in self.workers if workers is None else workers:
            assert worker.hostname is not None
            if not call("interactive", destination=[worker.hostname], reply=True, timeout=5):
                raise RuntimeError(f"worker {worker.hostname} did not answer {'add' if on else 'cancel'}_consumer")

    def events_per_job(self, samples: list[load.Sample]) -> float:
        """Mean number of events (status, token, result) the finished jobs wrote."""
        assert self.redis is not None
        ids = [s.job["id"] for s in samples if s.job]
        if not ids:
            return float("nan")
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(keys.job(job_id), "seq")
        seqs = [int(x or 0) for x in pipe.execute()]
        return sum(seqs) / len(seqs)

    def backlog(self) -> tuple[int, int]:
        """(messages waiting in the interactive queue, jobs leased by a worker)."""
        assert self.redis is not None
        return int(self.redis.llen("interactive")), int(self.redis.zcard(keys.LEASES))

    def settle(self, abandon: bool = False, timeout_s: float = 60.0) -> str:
        """Wait until no job is queued or running.

        With `abandon`, jobs nobody waits for any more (their clients left when
        the run ended) are dropped first: queued messages purged, running jobs
        cancelled, so the next run starts on an idle system. Returns what was done.
        """
        assert self.redis is not None
        note = ""
        if abandon:
            # Cancelled, not only purged: a queued job whose message is gone is
            # sent again by the reaper (worker/leases.py), and would run during
            # the next scenario.
            waiting = [str(x) for x in self.redis.zrange(keys.queued("interactive"), 0, -1)]
            leased = [str(x) for x in self.redis.zrange(keys.LEASES, 0, -1)]
            with httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", timeout=30) as client:
                for job_id in waiting + leased:
                    client.post(f"/jobs/{job_id}/cancel")
            purged = self.celery.control.purge() if self.backlog()[0] else 0
            if waiting:
                note = f"after the run, {len(waiting)} queued job(s) nobody waited for any more were cancelled"
                note += f" ({purged} message(s) purged)"
            if leased:
                note += (", and " if note else "after the run, ") + f"{len(leased)} running job(s) cancelled"
        deadline = time.monotonic() + timeout_s
        while True:
            queued, running = self.backlog()
            if not queued and not running:
                return note
            if time.monotonic() > deadline:
                return note + f"; still {queued} queued / {running} running {timeout_s:.0f} s later"
            time.sleep(0.2)


def idle_cpu(stack: Stack, seconds: float = 5.0) -> dict[str, float]:
    """Cores each process uses with nothing submitted (timers, heartbeats, polling)."""
    assert stack.api and stack.worker and stack.redis_proc and stack.baseline
    roles = {
        "api": [stack.api.pid],
        "worker": [w.pid for w in stack.workers],
        "redis": [stack.redis_proc.pid],
        "baseline": [stack.baseline.pid],
    }
    before = CpuSnapshot.take(roles)
    time.sleep(seconds)
    delta = CpuSnapshot.take(roles).since(before)
    return {role: delta.cores(role) for role in roles}


def wait_quiet(stack: Stack, max_wait_s: float) -> float:
    """Wait (at most `max_wait_s`) until processes other than ours use < 0.3 cores; returns that load."""
    roles = stack.roles(OURS)
    deadline = time.monotonic() + max_wait_s
    while True:
        before = CpuSnapshot.take(roles)
        time.sleep(1.0)
        other = CpuSnapshot.take(roles).since(before).cores("other")
        if other < 0.3 or time.monotonic() > deadline:
            return other


# --------------------------------------------------------------------------------------------
# Scenarios 1 and 2: closed loop
# --------------------------------------------------------------------------------------------


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
    settle_note: str = ""

    @property
    def completed(self) -> int:
        return len(self.run.ok)

    @property
    def system_cpu_s(self) -> float:
        return sum(v for k, v in self.cpu.roles.items() if k not in NOT_SYSTEM)

    @property
    def cpu_per_job_s(self) -> float:
        return self.system_cpu_s / self.completed if self.completed else float("nan")


def body_extra(system: str) -> dict[str, Any]:
    """What a system's requests add to `{"question": ...}`."""
    return {} if system == BASE else {"stream": system == OURS_STREAMING}


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
    result.max_lm_in_flight = _max_overlap(intervals)[0]
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

    def on_mark(what: str) -> None:
        marks[what] = CpuSnapshot.take(roles)

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


# --------------------------------------------------------------------------------------------
# Scenario 3: in-flight capacity and memory
# --------------------------------------------------------------------------------------------


@dataclass
class Capacity:
    jobs: int
    lm_timing: LMTiming
    submitted: int = 0
    submit_s: float = 0.0
    succeeded: int = 0
    not_succeeded: Counter[str] = field(default_factory=Counter)
    max_in_flight_lm: int = 0  # from the LM's records: requests received and not yet fully answered
    max_in_flight_at_s: float = 0.0  # after the first submit
    max_leased: int = 0  # jobs holding a lease (running), sampled
    max_sockets: int = 0  # established connections from the worker to the LM, sampled
    worker_rss_idle: int = 0
    worker_rss_peak: int = 0
    worker_threads_idle: int = 0
    worker_threads_peak: int = 0
    all_done_s: float = 0.0
    worker_cpu_s: float = 0.0


@dataclass
class SseMemory:
    streams: int
    jobs_submitted: int = 0
    opened: int = 0  # streams that received their first event
    open_s: float = 0.0
    ended_terminal: int = 0  # streams that ended with the terminal event after the cancel
    stream_failures: Counter[str] = field(default_factory=Counter)
    api_rss_before: int = 0
    api_rss_open: int = 0
    api_rss_after: int = 0
    api_cpu_open_s: float = 0.0


def _max_overlap(intervals: Iterable[tuple[float, float]]) -> tuple[int, float]:
    """Most intervals open at one moment, and that moment."""
    points = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda p: (p[0], p[1]))
    best, best_t, current = 0, 0.0, 0
    for t, step in points:
        current += step
        if current > best:
            best, best_t = current, t
    return best, best_t


async def in_flight(stack: Stack, jobs: int) -> Capacity:
    """One worker process alone: the others stop consuming meanwhile."""
    others = stack.workers[1:]
    if others:
        await asyncio.to_thread(stack.consume, False, others)
    try:
        return await _in_flight(stack, jobs)
    finally:
        if others:
            await asyncio.to_thread(stack.consume, True, others)


async def _in_flight(stack: Stack, jobs: int) -> Capacity:
    assert stack.worker is not None and stack.redis is not None
    cap = Capacity(jobs, stack.lm_timing)
    stack.clear_lm()
    worker_pid = stack.worker.pid
    client = stack.redis
    cap.worker_rss_idle = proc_rss_bytes(worker_pid)
    cap.worker_threads_idle = proc_threads(worker_pid)
    halt = asyncio.Event()

    async def sample() -> None:
        inodes_at = 0.0
        inodes: set[int] = set()
        while not halt.is_set():
            if time.monotonic() - inodes_at > 0.5:
                inodes, inodes_at = socket_inodes(worker_pid), time.monotonic()
            cap.max_sockets = max(cap.max_sockets, established(stack.lm_port, inodes))
            cap.max_leased = max(cap.max_leased, int(client.zcard(keys.LEASES)))
            cap.worker_rss_peak = max(cap.worker_rss_peak, proc_rss_bytes(worker_pid))
            cap.worker_threads_peak = max(cap.worker_threads_peak, proc_threads(worker_pid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(halt.wait(), 0.1)

    cpu0 = CpuSnapshot.take({"worker": [worker_pid]})
    sampler = asyncio.create_task(sample())
    t0 = time.time()
    questions = [load.new_question() for _ in range(jobs)]
    requests: list[tuple[str, str, bytes | None]] = [
        ("POST", "/jobs", json.dumps({"question": q}).encode()) for q in questions
    ]
    responses = await load.requests_many("127.0.0.1", stack.api_port, requests, concurrency=50)
    cap.submit_s = time.time() - t0
    ids = [json.loads(r[1])["id"] for r in responses if isinstance(r, tuple) and r[0] == 202]
    cap.submitted = len(ids)
    deadline = time.monotonic() + 120
    statuses: list[str | None] = []
    while time.monotonic() < deadline:
        pipe = stack.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(keys.job(job_id), "status")
        statuses = pipe.execute()
        if all(s in ("succeeded", "failed", "cancelled") for s in statuses):
            break
        await asyncio.sleep(0.5)
    cap.all_done_s = time.time() - t0
    halt.set()
    await sampler
    cap.worker_cpu_s = CpuSnapshot.take({"worker": [worker_pid]}).since(cpu0).roles["worker"]
    cap.succeeded = sum(1 for s in statuses if s == "succeeded")
    cap.not_succeeded = Counter(str(s) for s in statuses if s != "succeeded")
    lm = stack.lm_requests()
    intervals = []
    for q in questions:
        entry = lm.get(q)
        if entry is None:
            continue
        end = entry["chunk_times"][-1] if entry["chunk_times"] else entry["at"] + stack.lm_timing.ttft_s
        intervals.append((entry["at"], end))
    cap.max_in_flight_lm, at = _max_overlap(intervals)
    cap.max_in_flight_at_s = at - t0 if at else 0.0
    stack.clear_lm()
    log(
        f"in flight: {cap.max_in_flight_lm} LM calls at once (leased {cap.max_leased}, sockets {cap.max_sockets}); "
        f"{cap.succeeded}/{jobs} succeeded in {cap.all_done_s:.1f} s; worker RSS {mib(cap.worker_rss_idle)} -> "
        f"{mib(cap.worker_rss_peak)} MiB"
    )
    return cap


async def sse_memory(stack: Stack, streams: int) -> SseMemory:
    assert stack.api is not None
    result = SseMemory(streams)
    api_pid = stack.api.pid
    await asyncio.to_thread(stack.consume, False)
    try:
        requests: list[tuple[str, str, bytes | None]] = [
            ("POST", "/jobs", json.dumps({"question": load.new_question()}).encode()) for _ in range(streams)
        ]
        responses = await load.requests_many("127.0.0.1", stack.api_port, requests, concurrency=50)
        ids = [json.loads(r[1])["id"] for r in responses if isinstance(r, tuple) and r[0] == 202]
        result.jobs_submitted = len(ids)
        await asyncio.sleep(1.0)
        result.api_rss_before = proc_rss_bytes(api_pid)
        cpu0 = CpuSnapshot.take({"api": [api_pid]})
        t0 = time.monotonic()
        gate = asyncio.Semaphore(100)  # connections being set up at once
        firsts = [asyncio.Event() for _ in ids]

        async def one(job_id: str, first: asyncio.Event) -> load.Stream:
            await gate.acquire()
            released = False

            async def release_on_first() -> None:
                nonlocal released
                await first.wait()
                released = True
                gate.release()

            waiter = asyncio.create_task(release_on_first())
            try:
                return await load.follow_events("127.0.0.1", stack.api_port, load.Stream(job_id), first, 180.0)
            finally:
                waiter.cancel()
                if not released:
                    gate.release()

        tasks = [asyncio.create_task(one(j, f)) for j, f in zip(ids, firsts, strict=True)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(f.wait() for f in firsts)), 120)
        result.open_s = time.monotonic() - t0
        result.opened = sum(f.is_set() for f in firsts)
        result.api_cpu_open_s = CpuSnapshot.take({"api": [api_pid]}).since(cpu0).roles["api"]
        peak = 0
        for _ in range(20):
            peak = max(peak, proc_rss_bytes(api_pid))
            await asyncio.sleep(0.1)
        result.api_rss_open = peak
        cancels: list[tuple[str, str, bytes | None]] = [("POST", f"/jobs/{j}/cancel", None) for j in ids]
        await load.requests_many("127.0.0.1", stack.api_port, cancels, concurrency=50)
        done = await asyncio.gather(*tasks)
        result.ended_terminal = sum(1 for s in done if s.terminal in ("result", "error"))
        result.stream_failures = Counter(s.terminal for s in done if s.terminal not in ("result", "error"))
        await asyncio.sleep(1.0)
        result.api_rss_after = proc_rss_bytes(api_pid)
    finally:
        await asyncio.to_thread(stack.consume, True)
    await asyncio.to_thread(stack.settle)
    log(
        f"SSE: {result.opened}/{streams} streams open in {result.open_s:.1f} s; API RSS "
        f"{mib(result.api_rss_before)} -> {mib(result.api_rss_open)} MiB; {result.ended_terminal} ended properly"
    )
    return result


# --------------------------------------------------------------------------------------------
# Scenario 4: time to first token through SSE
# --------------------------------------------------------------------------------------------


@dataclass
class Ttft:
    clients: int
    duration_s: float
    lm_timing: LMTiming
    jobs: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    client: Dist = field(default_factory=lambda: Dist.of([]))  # submit -> first token event at the client
    lm: Dist = field(default_factory=lambda: Dist.of([]))  # LM received the request -> first content chunk
    added: Dist = field(default_factory=lambda: Dist.of([]))  # client minus lm, per job
    added_configured: Dist = field(default_factory=lambda: Dist.of([]))  # client minus the configured ttft
    to_lm: Dist = field(default_factory=lambda: Dist.of([]))  # submit -> LM received the request
    chunk_to_client: Dist = field(default_factory=lambda: Dist.of([]))  # first content chunk -> client


def first_content_chunk(texts: list[str]) -> int | None:
    """Index of the first chunk of field text: after the first `[[ ## field ## ]]` header."""
    header_done = False
    for i, text in enumerate(texts):
        if header_done and text.strip():
            return i
        if "]]" in text:
            header_done = True
    return None


async def time_to_first_token(stack: Stack, clients: int, duration_s: float) -> Ttft:
    result = Ttft(clients, duration_s, stack.lm_timing)
    stack.clear_lm()
    samples: list[tuple[str, float, load.Stream]] = []
    stop_at = time.time() + duration_s

    async def user() -> None:
        conn = load.Connection("127.0.0.1", stack.api_port)
        try:
            while time.time() < stop_at:
                question = load.new_question()
                start = time.time()
                status, body = await conn.request("POST", "/jobs", json.dumps({"question": question}).encode())
                if status != 202:
                    result.failures[f"submit HTTP {status}"] += 1
                    continue
                stream = load.Stream(json.loads(body)["id"])
                await load.follow_events("127.0.0.1", stack.api_port, stream, None, 60.0)
                samples.append((question, start, stream))
        finally:
            conn.close()

    await asyncio.gather(*(user() for _ in range(clients)))
    lm = stack.lm_requests()
    client, lm_ttft, added, added_conf, to_lm, chunk_to_client = [], [], [], [], [], []
    for question, start, stream in samples:
        if stream.terminal != "result" or not stream.first_token_t:
            result.failures[f"stream: {stream.terminal or 'no token event'}"] += 1
            continue
        result.jobs += 1
        observed = stream.first_token_t - start
        client.append(observed)
        added_conf.append(observed - stack.lm_timing.ttft_s)
        entry = lm.get(question)
        index = first_content_chunk(entry["chunk_texts"]) if entry else None
        if entry is None or index is None:
            result.failures["no LM record"] += 1
            continue
        chunk_t = entry["chunk_times"][index]
        lm_ttft.append(chunk_t - entry["at"])
        added.append(observed - (chunk_t - entry["at"]))
        to_lm.append(entry["at"] - start)
        chunk_to_client.append(stream.first_token_t - chunk_t)
    result.client, result.lm, result.added = Dist.of(client), Dist.of(lm_ttft), Dist.of(added)
    result.added_configured, result.to_lm = Dist.of(added_conf), Dist.of(to_lm)
    result.chunk_to_client = Dist.of(chunk_to_client)
    stack.clear_lm()
    log(
        f"TTFT: {result.jobs} jobs, client p50 {ms(result.client.p50)} p99 {ms(result.client.p99)} ms, "
        f"added p50 {ms(result.added.p50)} p99 {ms(result.added.p99)} ms"
    )
    return result


# --------------------------------------------------------------------------------------------
# Profile (py-spy)
# --------------------------------------------------------------------------------------------


@dataclass
class Profile:
    label: str  # under which load
    process: str
    samples: int  # samples of work
    idle_samples: int  # dropped: the last GIL holder blocked in a call that released it
    cpu_per_job_s: float  # the process's CPU seconds per job while profiled
    jobs: int
    self_top: list[tuple[str, float]]  # frame, share of samples
    inclusive_top: list[tuple[str, float]]
    categories: list[tuple[str, float]]  # each sample in exactly one category
    raw_path: Path


def _frame_key(frame: str) -> str:
    """`func (/abs/.../site-packages/pkg/mod.py:123)` -> `func (pkg/mod.py:123)`."""
    found = re.match(r"(.*) \((.*)\)$", frame)
    if not found:
        return frame
    func, path = found.groups()
    for marker in ("site-packages/", "lib/python3.11/", "lib/python3.12/", f"{ROOT}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})"


def _strip_line(key: str) -> str:
    return re.sub(r":\d+\)$", ")", key)


# Frames under which everything happens: not interesting inclusively.
_ROOTS = (
    "_bootstrap",
    "_bootstrap_inner",
    "run (threading.py)",
    "<module>",
    "run_forever",
    "_run_once",
    "run_until_complete",
    "_run (asyncio/events.py)",
    "(asyncio/runners.py)",
    "worker (concurrent/futures/thread.py)",
    "run (concurrent/futures/thread.py)",
    "body (celery/concurrency/thread.py)",
    "(<frozen runpy>)",
    "(click/core.py)",
    "(uvicorn/main.py)",
    "(uvicorn/server.py)",
    "(uvicorn/_compat.py)",
)


# Where a sample's time goes, for the per-job cost tables. A sample belongs to the
# first category (in order) with a pattern in any frame of its stack; failing
# that, to the first generic one whose pattern is in its innermost frame.
Categories = list[tuple[str, list[str]]]

WORKER_CATEGORIES: Categories = [
    ("DSPy `model_info`: metadata lookup, a full-table scan for a model it does not list", ["model_info ("]),
    ("Celery task events (`EventDispatcher`: one Redis PUBLISH per flush, on its own thread)", ["EventDispatcher"]),
    ("LiteLLM: cost calculation at the end of a stream", ["response_cost_calculator", "completion_cost"]),
    ("LiteLLM: `stream_chunk_builder` (rebuilds the whole response after the stream)", ["stream_chunk_builder"]),
    ("LiteLLM: logging object", ["litellm_logging"]),
    ("openai SDK: SSE decoding + pydantic model per chunk", ["AsyncStream.", "openai/_streaming"]),
    ("LiteLLM: `CustomStreamWrapper` per chunk", ["CustomStreamWrapper", "streaming_handler"]),
    ("LiteLLM / openai SDK: building and sending the request", ["acompletion", "openai/_base_client", "aiohttp/"]),
    ("DSPy native LM engine (lm15): request, HTTP, stream decoding", ["dspy/_vendor/lm15", "lm15_engine"]),
    ("DSPy `StreamListener.receive` per chunk", ["StreamListener.receive"]),
    ("ours: `FieldParser` (the stream split into fields, per chunk)", ["FieldParser.", "_ToParser."]),
    ("ours: token events (`EventWriter`: queue + pipelined EVALSHA)", ["EventWriter.", "JobUpdates.emit"]),
    (
        "ours: `JobUpdates.finish` (whole fields, result, lease, metrics: one script)",
        ["JobUpdates.finish"],
    ),
    ("ours: `JobUpdates.start` (lease, batch check, `running`: one script)", ["JobUpdates.start", "Leases."]),
    ("ours: per-job metrics read from the record (`record_job_outcome`)", ["record_job_outcome"]),
    ("ours: per-job log context", ["job_log_context", "log_context"]),
    (
        "DSPy callbacks (`with_callbacks`)",
        ["_execute_start_callbacks", "_execute_end_callbacks", "_get_on_start_handler"],
    ),
    (
        "DSPy adapter: format (JSON schema per field, every job)",
        ["ChatAdapter.format", "Adapter.format", "Adapter._call_preprocess"],
    ),
    ("DSPy adapter: parse", ["ChatAdapter.parse", "Adapter.parse", "Adapter._call_postprocess"]),
    ("DSPy `apply_sync_streaming`: queue to the Celery thread", ["apply_sync_streaming.<locals>.runner"]),
    (
        "a thread + an event loop per job",
        ["Thread.start", "new_event_loop", "Runner.close", "shutdown_default_executor"],
    ),
    ("anyio thread hops (`to_thread`, `from_thread`)", ["run_async_from_thread", "run_sync_in_worker_thread"]),
    ("DSPy streamify / module call plumbing", ["streamify", "dspy/primitives", "dspy/predict"]),
    ("ours: the rest of the job (worker/, incl. its other Redis calls)", [" (worker/", f" ({ROOT}/worker/"]),
    ("Celery / kombu: consuming, acking, task events", ["celery/", "kombu/"]),
    ("lease renewal, reaper, heartbeat threads", ["_renew_forever", "_reap_forever", "Heartbeat"]),
]
API_CATEGORIES: Categories = [
    ("hub: pub/sub messages (finished jobs for `?wait`, events for SSE)", ["EventHub._read_forever"]),
    ("task message (Celery's `create_task_message`, kombu's envelope)", ["TaskMessages.build"]),
    ("`wait_until_finished` (read record, wait for the finished notice)", ["wait_until_finished", "until_done"]),
    ("`create_job` (record, `queued` event, task message: one script)", ["create_job"]),
    ("idempotency digest", ["idempotency.py"]),
    ("response: `job_from_fields`, serialization", ["job_from_fields", "serialize_response", "jsonable_encoder"]),
    ("request body: parse + validate", ["request_body_to_args", "Request.body", "Request.json", "_get_body"]),
    ("uvicorn HTTP protocol", ["httptools_impl"]),
    ("FastAPI / Starlette routing, middleware, dependencies", ["fastapi/", "starlette/", "body_limit"]),
]
GENERIC_CATEGORIES = [
    ("asyncio event loop (innermost)", "asyncio/"),
    ("threading (innermost)", "threading.py"),
    ("redis-py (innermost)", "redis/"),
    ("DSPy, other (innermost)", "dspy/"),
    ("anyio (innermost)", "anyio/"),
    ("pydantic (innermost)", "pydantic/"),
]


# Innermost frames of a thread that is blocked (having released the GIL), not working.
IDLE_LEAVES = (
    "select (selectors.py",
    "Condition.wait (",
    "Event.wait (",
    "_worker (concurrent/futures/thread.py",
    "Queue.get (",
    "SimpleQueue.get (",
    "_read_from_socket (",
    "sock_recv",
    "time.sleep",
    "_wait_for_tstate_lock",
)
# py-spy shows no frame for a C function, so a thread blocked in one (hiredis's socket read, kombu's
# epoll wait, a SimpleQueue's get, uvloop's loop) has the Python line that called it as its innermost
# frame. Such a line, when it is one of these calls, marks the sample idle too. (Before this, such
# samples passed for work of the frame that waited: a worker's Redis replies counted as its own CPU.)
_BLOCKING_CALL = re.compile(r"\b(recv_into|recv|poll|select|run_until_complete|run_forever|sleep)\(|\.get\(\)")


def _idle(leaf: str) -> bool:
    if any(pattern in leaf for pattern in IDLE_LEAVES):
        return True
    found = re.match(r".* \((.*):(\d+)\)$", leaf)
    return found is not None and bool(_BLOCKING_CALL.search(linecache.getline(found[1], int(found[2]))))


def summarize(
    raw_path: Path, label: str, process: str, cpu_per_job_s: float, jobs: int, categories: Categories
) -> Profile:
    total = idle = 0
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_category: Counter[str] = Counter()
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        raw_frames = stack.split(";")
        if _idle(raw_frames[-1]):
            idle += n
            continue
        frames = [_frame_key(f) for f in raw_frames]
        total += n
        self_counts[frames[-1]] += n
        for frame in {_strip_line(f) for f in frames}:
            if not any(root in frame for root in _ROOTS):
                inclusive[frame] += n
        category = next((name for name, pats in categories if any(p in f for f in raw_frames for p in pats)), None)
        if category is None:
            category = next((name for name, p in GENERIC_CATEGORIES if p in raw_frames[-1]), "other")
        by_category[category] += n
    pct = 100 / max(total, 1)
    return Profile(
        label,
        process,
        total,
        idle,
        cpu_per_job_s,
        jobs,
        [(k, v * pct) for k, v in self_counts.most_common(25)],
        [(k, v * pct) for k, v in inclusive.most_common(40)],
        [(k, v * pct) for k, v in by_category.most_common()],
        raw_path,
    )


async def profile_ours(
    stack: Stack, py_spy: str, system: str, clients: int, duration_s: float, quiet_s: float, label: str, tag: str
) -> list[Profile]:
    assert stack.worker is not None and stack.api is not None
    # One worker process does all the work while it is profiled, so its CPU per job is its own.
    others = stack.workers[1:]
    if others:
        await asyncio.to_thread(stack.consume, False, others)
    try:
        return await _profile(stack, py_spy, system, clients, duration_s, quiet_s, label, tag)
    finally:
        if others:
            await asyncio.to_thread(stack.consume, True, others)


async def _profile(
    stack: Stack, py_spy: str, system: str, clients: int, duration_s: float, quiet_s: float, label: str, tag: str
) -> list[Profile]:
    assert stack.worker is not None and stack.api is not None
    targets = {"worker": stack.worker.pid, "api": stack.api.pid}
    spies: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    roles = {**stack.roles(OURS), "worker": [stack.worker.pid]}
    marks: dict[str, CpuSnapshot] = {}

    def on_mark(what: str) -> None:
        marks[what] = CpuSnapshot.take(roles)
        if what == "start":
            spy_log = (ARTIFACTS / "bench-suite-py-spy.log").open("ab")
            for name, pid in targets.items():
                out = ARTIFACTS / f"bench-suite-{tag}-{name}.pyspy.txt"
                out.unlink(missing_ok=True)
                # --gil: one stack per sample, the thread holding the GIL (Python work).
                # When nobody holds it py-spy reports the last holder, which is then
                # blocked in a call that released it: those samples are dropped (IDLE_LEAVES).
                cmd = [py_spy, "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--gil"]
                cmd += ["--nonblocking", "-o", str(out)]
                try:
                    spies[name] = (subprocess.Popen(cmd, stdout=spy_log, stderr=subprocess.STDOUT), out)
                except OSError as e:  # py-spy vanished (a `uv sync` removes it from .venv): no profile
                    log(f"could not start py-spy: {e}")
        else:
            for popen, _ in spies.values():
                popen.send_signal(signal.SIGINT)

    await asyncio.to_thread(wait_quiet, stack, quiet_s)
    stack.clear_lm()
    run = await load.closed_loop(
        f"profile x{clients}",
        "127.0.0.1",
        stack.api_port,
        OURS_PATH,
        load.classify_job,
        clients,
        3.0,
        duration_s,
        request_timeout_s=75.0,
        drain_s=10.0,
        on_mark=on_mark,
        body_extra=body_extra(system),
    )
    profiles = []
    cpu = marks["end"].since(marks["start"])
    jobs = len(run.ok)
    for name, (popen, out) in spies.items():
        try:
            await asyncio.to_thread(popen.wait, 30)
        except subprocess.TimeoutExpired:
            popen.kill()
            continue
        if out.exists():
            per_job = cpu.roles[name] / jobs if jobs else float("nan")
            categories = WORKER_CATEGORIES if name == "worker" else API_CATEGORIES
            profiles.append(summarize(out, label, name, per_job, jobs, categories))
    await asyncio.to_thread(stack.settle, True)
    stack.clear_lm()
    log(f"profiled {jobs} jobs, {label} ({run.throughput:.1f} jobs/s under py-spy)")
    return profiles


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


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


def _find(results: list[LoopResult], system: str, clients: int) -> LoopResult | None:
    return next((r for r in results if r.system == system and r.run.clients == clients), None)


def _cpu_ratio(results: list[LoopResult], system: str = OURS) -> float:
    """CPU per job of `system` over the baseline's, in one round of scenario 2."""
    ours = next(r for r in results if r.system == system)
    base = next(r for r in results if r.system == BASE)
    return ours.cpu_per_job_s / base.cpu_per_job_s if base.cpu_per_job_s else float("nan")


def median_round(rounds: list[list[LoopResult]]) -> list[LoopResult]:
    """The round whose ours / baseline CPU ratio is the median (the lower middle one of an even count)."""
    ranked = sorted(rounds, key=_cpu_ratio)
    return ranked[(len(ranked) - 1) // 2]


def _label(r: LoopResult) -> str:
    if r.system == BASE:
        return BASE
    return f"{r.system} ({r.events_per_job:.0f} events/job)"


def _failures(r: LoopResult) -> str:
    parts = [f"{n} {why}" for why, n in r.run.failures.most_common()]
    if r.run.unfinished:
        parts.append(f"{r.run.unfinished} still open at the end (abandoned)")
    return "; ".join(parts) or "none"


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def targets(res: Results) -> list[str]:
    """The issue's targets, each as measured. Ours without streaming is what is held to them (the baseline
    does not stream either); ours streaming is shown beside it."""
    rows: list[list[str]] = []
    for clients in (200, 1000):
        ours, streaming, base = (_find(res.realistic, system, clients) for system in SYSTEMS)
        if not (ours and streaming and base):
            continue
        wanted = "≥" if clients == 200 else ">"
        beats = streaming.run.throughput >= base.run.throughput
        if clients == 1000:
            beats = streaming.run.throughput > base.run.throughput
        rows.append(
            [
                f"Throughput at 1 s LM latency, {clients} clients, `make up`'s defaults: ours {wanted} baseline",
                f"ours {streaming.run.throughput:.1f} jobs/s streaming (the default), {ours.run.throughput:.1f} not "
                f"streaming; baseline {base.run.throughput:.1f} jobs/s (ratios "
                f"{ratio(streaming.run.throughput, base.run.throughput)}, "
                f"{ratio(ours.run.throughput, base.run.throughput)})",
                _verdict(beats),
            ]
        )
        if clients == 200:
            rows.append(
                [
                    "End-to-end latency p50 at 200 clients: ours ≤ baseline",
                    f"ours {ms(streaming.e2e.p50)} ms streaming, {ms(ours.e2e.p50)} ms not streaming; baseline "
                    f"{ms(base.e2e.p50)} ms",
                    _verdict(streaming.e2e.p50 <= base.e2e.p50),
                ]
            )
    ours, streaming, base = (_find(res.realistic, system, 200) for system in SYSTEMS)
    if ours and base:
        for name, quantile, limit_ms in (("p50", 0.5, 15), ("p99", 0.99, 60)):
            value = ours.added.p50 if quantile == 0.5 else ours.added.p99
            base_value = base.added.p50 if quantile == 0.5 else base.added.p99
            also = ""
            if streaming:
                also = f"; streaming {ms(streaming.added.p50 if quantile == 0.5 else streaming.added.p99)} ms"
            rows.append(
                [
                    f"Added latency {name} ≤ {limit_ms} ms (same run, 200 clients)",
                    f"{ms(value)} ms (baseline {ms(base_value)} ms{also})",
                    _verdict(value <= limit_ms / 1000),
                ]
            )
    else:
        rows.append(["Scenario 1 at 200 clients", "not run", "**not measured**"])
    if res.capacity:
        c = res.capacity
        rows.append(
            [
                "One worker process (2 cores) keeps ≥ 1,000 LM calls in flight, `make up`'s defaults",
                f"{c.max_in_flight_lm} at once ({c.jobs} jobs submitted, WORKER_CONCURRENCY={res.args.concurrency}, "
                "LM_MAX_IN_FLIGHT 1024 by default)",
                _verdict(c.max_in_flight_lm >= 1000),
            ]
        )
    else:
        rows.append(["LM calls in flight", "not run", "**not measured**"])
    clients = res.args.overhead_clients
    ours, streaming, base = (_find(res.overhead, system, clients) for system in SYSTEMS)
    if ours and base:
        cpu_ratio = ours.cpu_per_job_s / base.cpu_per_job_s
        also = ""
        if streaming:
            also = f"; streaming {ratio(streaming.cpu_per_job_s, base.cpu_per_job_s)}x"
        each = ", ".join(f"{_cpu_ratio(r):.2f}" for r in res.overhead_rounds)
        rows.append(
            [
                "Pure overhead (LM answers at once): CPU-s per job ≤ 2x the baseline's",
                f"{cpu_ratio:.2f}x, the median of {len(res.overhead_rounds)} round(s) ({each}): in that round ours "
                f"{ours.cpu_per_job_s * 1000:.2f} ms, baseline {base.cpu_per_job_s * 1000:.2f} ms per job{also}",
                _verdict(cpu_ratio <= 2.0),
            ]
        )
    else:
        rows.append(["Pure overhead, CPU per job", "not run", "**not measured**"])
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


def _loop_table(results: list[LoopResult], realistic: bool) -> list[str]:
    header = [
        "clients",
        "system",
        "completed jobs/s",
        "e2e p50 / p99 (ms)",
        "LM's own time p50 (ms)",
        "added p50 / p99 (ms)",
        "errors / timeouts",
        "LM calls in flight (max)",
        "CPU: system / LM sim / client (cores)",
        "other load (cores)",
    ]
    if realistic:
        header.insert(6, "system CPU per job (ms)")
    else:
        header[4:6] = ["system CPU per job"]
        header.remove("LM calls in flight (max)")
    rows = []
    for r in results:
        cpu = r.cpu
        system_cores = r.system_cpu_s / max(cpu.wall_s, 1e-9)
        row: list[object] = [
            r.run.clients,
            _label(r),
            f"{r.run.throughput:.1f}",
            f"{ms(r.e2e.p50)} / {ms(r.e2e.p99)}",
        ]
        if realistic:
            row += [ms(r.lm_time.p50), f"{ms(r.added.p50)} / {ms(r.added.p99)}", f"{r.cpu_per_job_s * 1000:.1f}"]
        else:
            row += [f"{r.cpu_per_job_s * 1000:.2f} ms"]
        row += [_failures(r), *([r.max_lm_in_flight] if realistic else [])]
        row += [
            f"{system_cores:.2f} / {cpu.cores('lm'):.2f} / {cpu.cores('client'):.2f}",
            f"{cpu.cores('other'):.2f}",
        ]
        rows.append(row)
    return table(header, rows)


def _ratio_table(results: list[LoopResult], cpu: bool = False) -> list[str]:
    rows = []
    for clients in sorted({r.run.clients for r in results}):
        base = _find(results, BASE, clients)
        for system in (OURS, OURS_STREAMING):
            ours = _find(results, system, clients)
            if not ours or not base:
                continue
            rows.append(
                [
                    clients,
                    system,
                    ratio(ours.run.throughput, base.run.throughput),
                    f"{ratio(ours.e2e.p50, base.e2e.p50)} / {ratio(ours.e2e.p99, base.e2e.p99)}",
                    ratio(ours.cpu_per_job_s, base.cpu_per_job_s)
                    if cpu
                    else f"{ratio(ours.added.p50, base.added.p50)} / {ratio(ours.added.p99, base.added.p99)}",
                ]
            )
    last = "CPU per job" if cpu else "added p50 / p99"
    return table(["clients", "ours", "throughput", "e2e p50 / p99", last], rows)


def _breakdown_table(results: list[LoopResult]) -> list[str]:
    rows = []
    for r in results:
        if r.system == BASE:
            continue
        rows.append(
            [
                f"{r.run.clients} ({r.system})",
                f"{ms(r.to_lm.p50)} / {ms(r.to_lm.p99)}",
                f"{ms(r.queue_wait.p50)} / {ms(r.queue_wait.p99)}",
                f"{ms(r.start_to_lm.p50)} / {ms(r.start_to_lm.p99)}",
                f"{ms(r.lm_time.p50)} / {ms(r.lm_time.p99)}",
                f"{ms(r.from_lm.p50)} / {ms(r.from_lm.p99)}",
            ]
        )
    for r in results:
        if r.system != BASE:
            continue
        rows.append(
            [
                f"{r.run.clients} (baseline)",
                f"{ms(r.to_lm.p50)} / {ms(r.to_lm.p99)}",
                "-",
                "-",
                f"{ms(r.lm_time.p50)} (configured)",
                f"{ms(r.from_lm.p50)} / {ms(r.from_lm.p99)}",
            ]
        )
    return table(
        [
            "clients",
            "submit → LM has the request p50 / p99 (ms)",
            "of which queued (created → started) p50 / p99",
            "of which started → LM has the request p50 / p99",
            "LM's own time p50 / p99",
            "LM's last chunk → client has the answer p50 / p99",
        ],
        rows,
    )


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


def _automatic_notes(res: Results) -> list[str]:
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
                f"cap to its concurrency (`worker/streaming.py`)."
            )
            break
    ours = _find(res.overhead, OURS, res.args.overhead_clients)
    base = _find(res.overhead, BASE, res.args.overhead_clients)
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


def render(res: Results) -> str:
    args = res.args
    lines: list[str] = []
    add = lines.append
    add("# Benchmarks: the job service against a direct-call baseline")
    add("")
    add("Regenerate with one command (it starts and stops everything it measures):")
    add("")
    add("```sh")
    add(command_line("bench"))
    add("```")
    add("")
    add(f"- Run: {res.started.strftime('%Y-%m-%d %H:%M:%S %Z')}, took {res.duration_s / 60:.1f} min")
    add(f"- Code: {res.code}")
    for name, value in machine():
        add(f"- {name}: {value}")
    add("- Packages: " + ", ".join(f"{n} {v}" for n, v in versions(PACKAGES)))
    if args.env:
        add("- Extra settings for the systems under test: " + ", ".join(f"`{e}`" for e in args.env))
    add(
        f"- **Ours**: 1 API process (`uvicorn api.main:app`, uvloop + httptools, `--log-level warning`), "
        f"{args.workers} Celery worker process{'es' if args.workers > 1 else ''} (each `-P threads -c "
        f"{args.concurrency}`, `WORKER_CONCURRENCY={args.concurrency}`, interactive queue, "
        f"`--loglevel INFO` as in `make up`), a private redis-server (no persistence). Clients call "
        f"`POST {OURS_PATH}` and get the finished job."
    )
    add(
        "- **Baseline**: `bench/baseline_app.py`, 1 uvicorn process, `POST /predict` awaiting "
        "`program.acall(question=...)` in the request: the same `qa` program and artifact, the same LM settings "
        "(`program.lm.build_lm`, `build_adapter`), inside `dspy.context(disable_history=True, trace=None)`. No "
        "queue, no record, no streaming, no retries. DSPy's per-call metadata lookups and type adapters are "
        "cached in it as in the worker (`patches/dspy_caches.py`), so the comparison measures the queue."
    )
    add(
        f"- **LM**: the scripted simulator (`stack/lm_simulator.py`), `LM_CACHE=false`; every question is unique "
        f"and 14 words long, so every answer is the same {res.chunks} chunks (reasoning, answer, key_concepts, "
        f'question_type with their headers). *Ours* sends `"stream": false`: the worker calls the program without '
        f"streaming and writes each field whole, as one `token` event, before the result; *ours, streaming* sends "
        f'`"stream": true` (the default): the LM streams, and every chunk is a `token` event. The baseline does '
        f"not stream."
    )
    add(
        "- **Clients**: this process, one asyncio (uvloop) task and one keep-alive HTTP/1.1 socket per client, "
        "closed loop (submit, wait for the answer, submit again), requests pre-encoded; its CPU is reported as "
        "*client*. Everything shares the same 2 cores, so the LM simulator and the clients take CPU from the "
        "system under test; *other load* is CPU used by processes outside this benchmark during the window (the "
        "machine is shared; each run first waits up to "
        f"{args.quiet_wait_s:g} s for it to drop below 0.3 cores)."
    )
    add("")

    add("## Targets")
    add("")
    lines += targets(res)
    add("")
    add(
        "*Added latency* = end-to-end time seen by the client minus the LM's own time for that request. "
        "For ours, the LM's own time is read from the simulator's records per request (request received → last "
        "chunk handed to its server); for the baseline, whose request is not streamed, the simulator records no end "
        "time, so it is the configured time (ttft + chunks / tokens-per-s)."
    )
    add("")

    add("## 1. Overhead at realistic LM latency")
    add("")
    realistic_timing = res.realistic[0].lm_timing if res.realistic else None
    if realistic_timing:
        add(
            f"LM: {realistic_timing}: {res.chunks} chunks, configured "
            f"{realistic_timing.answer_s(res.chunks) * 1000:.0f} ms per answer. Closed loop, "
            f"{args.warmup_s:g} s warm-up then {args.duration_s:g} s measured per run; a request counts when it "
            f"ends inside the measured window. When the window closes clients stop submitting; requests still "
            f"open get {args.drain_s:g} s, then are abandoned (reported)."
        )
        add("")
        lines += _loop_table(res.realistic, realistic=True)
        add("")
        add("Ours / baseline:")
        add("")
        lines += _ratio_table(res.realistic)
        add("")
        add("Where ours spends the time (per request, from the simulator's clock and the job's own timestamps):")
        add("")
        lines += _breakdown_table(res.realistic)
        add("")
        for r in res.realistic:
            if r.settle_note:
                add(f"- {r.system} x{r.run.clients}: {r.settle_note}")
            if r.unmatched:
                add(f"- {r.system} x{r.run.clients}: {r.unmatched} completed requests had no LM record")
        add("")

    add("## 2. Pure overhead (LM answers at once)")
    add("")
    if res.overhead:
        add(
            f"LM: {res.overhead[0].lm_timing}. {res.overhead[0].run.clients} closed-loop clients, "
            f"{args.warmup_s:g} s warm-up, {args.overhead_duration_s:g} s measured. *CPU-s per job* = CPU seconds "
            "of every process of the system (ours: API + worker + redis-server; baseline: its one process) during "
            "the window (`/proc/<pid>/stat` utime + stime) / jobs completed in it. "
            f"{len(res.overhead_rounds)} round(s), each running the three systems in turn; the machine's speed "
            "drifts between rounds by more than these systems differ, so each round's ratio is its own, and the "
            "tables after this one show the round with the median ours / baseline CPU ratio."
        )
        add("")
        lines += table(
            ["round", "ours: CPU per job (ms)", "ours, streaming", "baseline", "ours / baseline", "streaming / base"],
            [
                [
                    f"{i + 1}{' (median)' if rnd is res.overhead else ''}",
                    *(f"{r.cpu_per_job_s * 1000:.2f}" for r in rnd),
                    f"{_cpu_ratio(rnd):.2f}",
                    f"{_cpu_ratio(rnd, OURS_STREAMING):.2f}",
                ]
                for i, rnd in enumerate(res.overhead_rounds)
            ],
        )
        add("")
        lines += _loop_table(res.overhead, realistic=False)
        add("")
        rows = []
        for r in res.overhead:
            per = {k: v / r.completed * 1000 if r.completed else float("nan") for k, v in r.cpu.roles.items()}
            rows.append(
                [r.system, *(f"{per.get(k, float('nan')):.2f}" for k in ("api", "worker", "redis", "baseline"))]
            )
            rows[-1] += [f"{per['lm']:.2f}", f"{per['client']:.2f}"]
        lines += table(
            ["CPU ms per job", "API", "worker", "redis", "baseline", "LM sim", "client"],
            [[c.replace("nan", "-") for c in row] for row in rows],
        )
        add("")
        add("Ours / baseline:")
        add("")
        lines += _ratio_table(res.overhead, cpu=True)
    else:
        add("Not run.")
    add("")

    add("## 3. In-flight capacity and memory")
    add("")
    if res.capacity:
        c = res.capacity
        add(
            f"LM: {c.lm_timing}. {c.jobs} jobs submitted at once (`POST /jobs`, 50 connections, "
            f"{c.submit_s:.1f} s to submit); one worker, `-c {args.concurrency}`. *In flight* = LM requests "
            f"received and not yet fully answered, from the simulator's own records (received → last chunk); "
            f"also sampled every 0.1 s: jobs holding a lease (`running`) and the worker's established connections "
            f"to the LM."
        )
        add("")
        lines += table(
            ["measure", "value"],
            [
                [
                    "LM calls in flight at once (max)",
                    f"**{c.max_in_flight_lm}** ({c.max_in_flight_at_s:.1f} s after the first submit)",
                ],
                ["jobs running at once (leases, max sampled)", c.max_leased],
                ["worker → LM connections (max sampled)", c.max_sockets],
                [
                    "jobs succeeded",
                    f"{c.succeeded} / {c.submitted} ({dict(c.not_succeeded) or 'all'}), "
                    f"all done after {c.all_done_s:.1f} s",
                ],
                [
                    "worker CPU for the whole batch",
                    f"{c.worker_cpu_s:.1f} s ({c.worker_cpu_s / max(c.succeeded, 1) * 1000:.1f} ms per job)",
                ],
                [
                    "worker RSS: just started / idle before this scenario / peak",
                    f"{mib(res.idle_rss.get('worker', 0))} / {mib(c.worker_rss_idle)} / {mib(c.worker_rss_peak)} MiB",
                ],
                ["worker threads: idle / peak", f"{c.worker_threads_idle} / {c.worker_threads_peak}"],
                [
                    "CPU with nothing submitted (5 s after start): API / worker / redis / baseline",
                    " / ".join(
                        f"{res.idle_cores.get(k, float('nan')):.3f}" for k in ("api", "worker", "redis", "baseline")
                    )
                    + " cores",
                ],
            ],
        )
        add("")
    if res.sse:
        s = res.sse
        per_stream = (s.api_rss_open - s.api_rss_before) / max(s.opened, 1)
        add(
            f"API memory with {s.streams} open SSE streams: the worker stops consuming (Celery `cancel_consumer`), "
            f"{s.jobs_submitted} jobs are submitted (they stay `queued`), one `GET /jobs/{{id}}/events` per job "
            f"is opened (at most 100 connecting at once) and counts as open once its first event (`queued`) "
            f"arrives; then every job is cancelled, which ends each stream with its terminal event."
        )
        add("")
        lines += table(
            ["measure", "value"],
            [
                ["streams open (first event received)", f"{s.opened} / {s.streams} in {s.open_s:.1f} s"],
                [
                    "API RSS: just started / before the streams / with them open / after they ended",
                    f"{mib(res.idle_rss.get('api', 0))} / {mib(s.api_rss_before)} / **{mib(s.api_rss_open)}** / "
                    f"{mib(s.api_rss_after)} MiB",
                ],
                ["API memory per open stream", f"{per_stream / 1024:.0f} KiB"],
                [
                    "API CPU to open them",
                    f"{s.api_cpu_open_s:.2f} s ({s.api_cpu_open_s / max(s.opened, 1) * 1e6:.0f} µs per stream)",
                ],
                [
                    "streams ended with the terminal event after the cancel",
                    f"{s.ended_terminal} / {s.opened}; other endings: {dict(s.stream_failures) or 'none'}",
                ],
                ["baseline RSS (just started)", f"{mib(res.idle_rss.get('baseline', 0))} MiB"],
            ],
        )
        add("")
    if not res.capacity and not res.sse:
        add("Not run.")
        add("")

    add("## 4. Time to first token through SSE")
    add("")
    if res.ttft:
        t = res.ttft
        add(
            f"LM: {t.lm_timing}. {t.clients} closed-loop clients for {t.duration_s:g} s, each: `POST /jobs`, then "
            f"`GET /jobs/{{id}}/events` until the result. Client TTFT = submit → first `token` event received. "
            f"The LM's own TTFT = request received → first chunk of field text (after the `[[ ## reasoning ## ]]` "
            f"header, which the listener holds back), from the simulator's records. {t.jobs} jobs; failures: "
            f"{dict(t.failures) or 'none'}. The baseline cannot stream: its first byte of answer comes with the "
            f"whole answer (section 1)."
        )
        add("")
        lines += table(
            ["", "p50 (ms)", "p99 (ms)", "max (ms)"],
            [
                ["client TTFT (submit → first token event)", ms(t.client.p50), ms(t.client.p99), ms(t.client.max)],
                ["LM's own TTFT (measured)", ms(t.lm.p50), ms(t.lm.p99), ms(t.lm.max)],
                [
                    "**added: client TTFT - LM's own TTFT**",
                    f"**{ms(t.added.p50)}**",
                    f"**{ms(t.added.p99)}**",
                    ms(t.added.max),
                ],
                [
                    f"client TTFT - configured ttft ({t.lm_timing.ttft_s * 1000:.0f} ms)",
                    ms(t.added_configured.p50),
                    ms(t.added_configured.p99),
                    ms(t.added_configured.max),
                ],
                ["of which: submit → LM has the request", ms(t.to_lm.p50), ms(t.to_lm.p99), ms(t.to_lm.max)],
                [
                    "of which: first content chunk → client",
                    ms(t.chunk_to_client.p50),
                    ms(t.chunk_to_client.p99),
                    ms(t.chunk_to_client.max),
                ],
            ],
        )
    else:
        add("Not run.")
    add("")

    if res.profiles:
        add("## 5. Where ours spends its CPU (py-spy)")
        add("")
        add(
            "`py-spy record --gil --nonblocking --rate 100` on the worker and the API during a closed-loop run "
            "(throughput is lower under the profiler): under scenario 2's load (LM answers at once, so a job's "
            "chunks arrive together), and under scenario 1's LM (chunks spread over a second, one by one). "
            "`--gil` takes the stack of the thread holding the GIL; "
            "when no thread holds it py-spy still reports the last holder, then blocked in a call that released it "
            "(`select`, a socket `recv`, a lock or queue wait): those idle samples are dropped, so the shares are "
            "of Python work. *ms per job* = share x the process's CPU seconds per job (from /proc) in that window, "
            "an approximation: /proc also counts CPU spent outside the GIL (system calls, C code). Raw stacks: "
            + ", ".join(f"`{p.raw_path.relative_to(ROOT)}`" for p in res.profiles)
            + "."
        )
        add("")
        for p in res.profiles:
            add(
                f"### {p.process}, {p.label}: {p.cpu_per_job_s * 1000:.2f} ms CPU per job ({p.jobs} jobs; "
                f"{p.samples} samples of work, {p.idle_samples} idle ones dropped)"
            )
            add("")
            add("Each sample in one bucket (the first listed bucket with a matching frame anywhere in its stack):")
            add("")
            lines += table(
                ["where", "share", "≈ ms per job"],
                [[k, f"{v:.1f} %", f"{v / 100 * p.cpu_per_job_s * 1000:.2f}"] for k, v in p.categories],
            )
            add("")
            add("Top inclusive frames (the frame and everything it calls):")
            add("")
            lines += table(
                ["frame", "share", "≈ ms per job"],
                [[f"`{k}`", f"{v:.1f} %", f"{v / 100 * p.cpu_per_job_s * 1000:.2f}"] for k, v in p.inclusive_top[:12]],
            )
            add("")
            add("Top self time (innermost Python frame):")
            add("")
            lines += table(["frame", "share"], [[f"`{k}`", f"{v:.1f} %"] for k, v in p.self_top[:10]])
            add("")

    add("## 6. The embedded default under a batch")
    add("")
    if res.embedded is not None:
        lines += embedded_bench.section(res.embedded)
    else:
        add("Not run (`--scenarios` without 5); `python -m bench.embedded` measures it alone.")
        add("")

    add("## SSE benchmark")
    add("")
    if SSE_RESULTS.exists():
        text = SSE_RESULTS.read_text()
        date = re.search(r"^- Date: (.*)$", text, re.M)
        add(
            f"Chunk-to-client latency and fan-out to many clients of one job are measured by "
            f"`.venv/bin/python -m bench.sse_bench`; its latest results (run {date.group(1) if date else '?'}) are "
            f"in [bench/results/sse.md](bench/results/sse.md)."
        )
    else:
        add(
            "Chunk-to-client latency and fan-out are measured by `.venv/bin/python -m bench.sse_bench`, which "
            "writes `bench/results/sse.md`; it has not been run on this checkout yet."
        )
    others = sorted(p for p in SSE_RESULTS.parent.glob("*.md") if p != SSE_RESULTS)
    if others:
        add(
            "Other results in `bench/results/`: "
            + ", ".join(f"[{p.name}](bench/results/{p.name})" for p in others)
            + " (written by their own commands)."
        )
    add("")
    notes = [*_automatic_notes(res), *res.notes]
    if notes:
        add("## Notes")
        add("")
        lines += [f"- {n}" for n in notes]
        add("")
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


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
    parser.add_argument("--workers", type=int, default=1, help="worker processes (scenario 3 measures one alone)")
    parser.add_argument("--quiet-wait-s", type=float, default=30.0, help="wait this long at most for a quiet machine")
    parser.add_argument("--scenarios", default="1,2,3,4,5", help="which scenarios to run")
    parser.add_argument("--embedded-items", type=int, default=200, help="scenario 5: items in the batch")
    parser.add_argument("--embedded-serial-calls", type=int, default=20, help="scenario 5: direct calls")
    parser.add_argument("--embedded-idle-jobs", type=int, default=8, help="scenario 5: interactive jobs, idle")
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
    return args


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result


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
            embedded_bench.measure, args.embedded_items, args.embedded_serial_calls, args.embedded_idle_jobs
        )
    if not args.py_spy and not args.no_profile:
        res.notes.append("py-spy not found: no profile (install it in .venv to get one).")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.monotonic()
    raise_fd_limit()  # inherited by every process started from here
    signal.signal(signal.SIGTERM, _exit_on_signal)  # so that `finally` stops every process we started
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


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
