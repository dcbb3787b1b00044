"""Scenario 3: LM calls one worker process keeps in flight, its memory; the API's memory with open SSE streams."""

import asyncio
import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field

from bench import load
from bench.report import CpuSnapshot, mib, proc_rss_bytes, proc_threads, socket_inodes
from bench.report import established_to_port as established
from bench.scenarios.common import LMTiming, log, max_overlap
from bench.scenarios.stack import Stack
from core import keys


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
    cap.max_in_flight_lm, at = max_overlap(intervals)
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
