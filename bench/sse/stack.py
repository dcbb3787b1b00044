"""The SSE benchmark's stack (redis-server, the LM simulator, a worker, the API, the client processes)
and one run: a job, `clients` listeners, and what they measured."""

import argparse
import contextlib
import json
import multiprocessing
import os
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import cast

import httpx

from bench.report import Dist, proc_rss_bytes
from bench.sse.clients import SwarmConnected, SwarmDone, SwarmJob, client_process
from bench.sse.measure import CpuSampler, Matching, PublishObserver, children, match_tokens
from bench.sse.profile import Profile, start_profile, stop_profile
from core.queue import make_celery
from core.settings import Settings
from harness.processes import (
    ARTIFACTS,
    Proc,
    free_port,
    start_api,
    start_lm_simulator,
    start_redis,
    start_worker,
    wait_for,
)
from harness.sse_client import read_events


def _rss_mb(pid: int) -> float:
    return proc_rss_bytes(pid) / 1024 / 1024


@dataclass
class Run:
    scenario: str
    clients: int
    tps: float
    job_id: str
    other_before: float = 0.0  # cores used by processes not ours just before the run
    connected: int = 0
    connect_failures: Counter[str] = field(default_factory=Counter)
    connect_s: float = 0.0
    complete: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    matching: Matching | None = None
    lm_stream_s: float = 0.0  # first to last content chunk sent by the LM
    last_delivery_s: float = 0.0  # first chunk sent to the last client finished
    total: Dist | None = None  # chunk sent -> client received
    to_publish: Dist | None = None  # chunk sent -> event published in Redis
    from_publish: Dist | None = None  # event published -> client received
    from_first_chunk: Dist | None = None  # like total, from the first chunk of merged events
    deliveries: int = 0  # events received by clients while the job ran
    cpu: dict[str, tuple[float, float]] = field(default_factory=dict)  # role -> (avg, peak) cores
    api_cpu_s: float = 0.0
    api_gc_s: float | None = None  # API time in garbage collection while streaming (--api-gc stats/freeze)
    api_connect_cpu_s: float = 0.0
    api_rss_before_mb: float = 0.0
    api_rss_connected_mb: float = 0.0  # with every client connected
    connect_profile: Profile | None = None
    words: int = 0
    label: str = ""  # how the API was run, when not as tests run it
    client_cpu_s: float = 0.0
    wall_s: float = 0.0
    profile: Profile | None = None
    note: str = ""
    # Every chunk -> client delay (and from the first chunk of each event), kept for small runs only.
    samples: list[float] = field(default_factory=list, repr=False)
    first_samples: list[float] = field(default_factory=list, repr=False)

    @property
    def api_us_per_delivery(self) -> float:
        return self.api_cpu_s / self.deliveries * 1e6 if self.deliveries else float("nan")

    @property
    def client_us_per_delivery(self) -> float:
        return self.client_cpu_s / self.deliveries * 1e6 if self.deliveries else float("nan")


def question(words: int, tps: float) -> str:
    tag = uuid.uuid4().hex[:8]
    return f"bench {tag} " + " ".join(f"w{i}" for i in range(words)) + f" [lm:tps={tps:g}]"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.procs: list[Proc] = []
        self.client_procs: list[multiprocessing.process.BaseProcess] = []
        self.pipes: list[Connection] = []
        self.redis_url = ""
        self.lm_base = ""
        self.api_url = ""
        self.worker: Proc | None = None
        self.api: Proc | None = None
        self.redis_proc: Proc | None = None
        self.lm: Proc | None = None
        self.sampler: CpuSampler | None = None
        self.http: httpx.Client | None = None
        self.gc_stats: Path | None = None
        self.env: dict[str, str] = {}
        self.api_mode = "off"

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            # A helper that times out (say, a worker that cannot start) does not hand back its process:
            # stop every child of ours that is not accounted for, by pid.
            known = {proc.pid for proc in self.procs} | {p.pid for p in self.client_procs if p.pid is not None}
            for pid in children(os.getpid()) - known:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGTERM)
            raise

    def _start(self) -> None:
        self.redis_proc, self.redis_url = start_redis("bench-redis")
        if self.redis_proc is None:
            raise RuntimeError("the benchmark needs redis-server on PATH (it measures a private one)")
        self.procs.append(self.redis_proc)
        self.lm, lm_api_base = start_lm_simulator("bench-lm-simulator")
        self.procs.append(self.lm)
        self.lm_base = lm_api_base.removesuffix("/v1")
        self.env = env = {
            "REDIS_URL": self.redis_url,
            "LM_MODEL": "openai/simulated",
            "LM_API_BASE": lm_api_base,
            "LM_CACHE": "false",
            "WORKER_HEARTBEAT_S": "1",
            "API_REDIS_MAX_CONNECTIONS": str(self.args.api_redis_max_connections),
        }
        self.worker = start_worker(env, name="bench-worker", concurrency=4)
        self.procs.append(self.worker)
        self.api, self.api_url = self._start_api(self.args.api_gc)
        self.procs.append(self.api)
        self.http = httpx.Client(base_url=self.api_url, timeout=60)
        self.celery = make_celery(Settings(redis_url=self.redis_url))
        ctx = multiprocessing.get_context("spawn")
        for _ in range(self.args.client_procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_process, args=(child,), daemon=True, name="sse-bench-clients")
            proc.start()
            self.client_procs.append(proc)
            self.pipes.append(parent)
        roles = {
            "api": [self.api.pid],
            "worker": [self.worker.pid],
            "redis": [self.redis_proc.pid],
            "lm": [self.lm.pid],
            "clients": [p.pid for p in self.client_procs if p.pid is not None],
            "bench": [os.getpid()],
        }
        self.sampler = CpuSampler(roles)
        self.sampler.start()

    def _start_api(self, gc_mode: str) -> tuple[Proc, str]:
        """`off`: exactly as the tests start it; otherwise the same app through `--serve-api` (see `serve_api`)."""
        self.api_mode = gc_mode
        if gc_mode == "off":
            self.gc_stats = None
            return start_api(self.env, name="bench-api")
        port = free_port()
        self.gc_stats = ARTIFACTS / f"sse-bench-api-gc-{port}.json"
        cmd = [sys.executable, "-m", "bench.sse_bench", "--serve-api", str(port), gc_mode, str(self.gc_stats)]
        proc = Proc("bench-api", cmd, self.env)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, 30, "API", proc)
        return proc, base

    def restart_api(self, gc_mode: str) -> None:
        assert self.api is not None and self.sampler is not None and self.http is not None
        self.procs.remove(self.api)
        self.api.stop()
        self.api, self.api_url = self._start_api(gc_mode)
        self.procs.append(self.api)
        self.http.close()
        self.http = httpx.Client(base_url=self.api_url, timeout=60)
        self.sampler.roles["api"] = [self.api.pid]
        time.sleep(1.0)  # the sampler has seen the new process before a run starts

    def api_gc_s(self) -> float | None:
        if self.gc_stats is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            seconds: float = json.loads(self.gc_stats.read_text())["seconds"]
            return seconds
        return None

    def stop(self) -> None:
        try:
            if self.sampler is not None:
                self.sampler.stop()
            for pipe in self.pipes:
                with contextlib.suppress(OSError):
                    pipe.send(None)
            for client_proc in self.client_procs:
                client_proc.join(5)
                if client_proc.is_alive():
                    client_proc.kill()
            if self.http is not None:
                self.http.close()
        finally:
            for proc in reversed(self.procs):
                try:
                    proc.stop()
                except Exception as e:  # stop the others anyway
                    print(f"[sse-bench] could not stop {proc.name}: {e}", file=sys.stderr)

    # -- gate: the worker holds off the job until every client listens ------------------------------

    def _consumer(self, add: bool) -> None:
        assert self.worker is not None and self.worker.hostname is not None
        control = self.celery.control
        call = control.add_consumer if add else control.cancel_consumer
        replies = call("interactive", destination=[self.worker.hostname], reply=True, timeout=5)
        if not replies:
            raise RuntimeError(f"worker {self.worker.hostname} did not answer {'add' if add else 'cancel'}_consumer")

    # -- one job, `clients` listeners ------------------------------------------------------------------

    def wait_quiet(self) -> float:
        """Wait (at most --quiet-wait-s) until processes other than ours use < 0.3 cores; returns that load."""
        assert self.sampler is not None
        deadline = time.monotonic() + self.args.quiet_wait_s
        while True:
            t0 = time.time()
            time.sleep(1.0)
            other = self.sampler.cores("other", t0, time.time() - 0.1)
            if other < 0.3 or time.monotonic() > deadline:
                return other

    def run(self, scenario: str, clients: int, tps: float, words: int, profile: bool = False) -> Run:
        assert self.http is not None and self.sampler is not None and self.api is not None
        other_before = self.wait_quiet()
        wall0 = time.monotonic()
        self._consumer(add=False)
        text = question(words, tps)
        response = self.http.post("/jobs", json={"question": text})
        response.raise_for_status()
        job_id: str = response.json()["id"]
        result = Run(scenario, clients, tps, job_id, other_before=other_before, words=words)
        if self.api_mode != "off":
            result.label = f"gc: {self.api_mode}"
        result.api_rss_before_mb = _rss_mb(self.api.pid)
        observer = PublishObserver(self.redis_url, job_id)
        observer.start()
        host, port = self.api_url.removeprefix("http://").split(":")
        procs = min(len(self.pipes), max(1, clients // 50))
        shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        api_cpu_connect0 = self.sampler.snapshot()[1]["api"]
        spy = start_profile(self.args.py_spy, self.api.pid, "connect", self.args.py_spy_native) if profile else None
        for pipe, share in zip(self.pipes, shares, strict=False):
            pipe.send(
                SwarmJob(
                    host,
                    int(port),
                    job_id,
                    share,
                    self.args.connect_concurrency,
                    connect_timeout_s=30 + clients / 100,
                    stream_timeout_s=self.args.stream_timeout_s,
                )
            )
        connected = [cast(SwarmConnected, self._recv(pipe, 60 + clients / 50)) for pipe in self.pipes[:procs]]
        result.api_connect_cpu_s = self.sampler.snapshot()[1]["api"] - api_cpu_connect0
        result.api_rss_connected_mb = _rss_mb(self.api.pid)
        if spy is not None:
            result.connect_profile = stop_profile(spy)
        result.connected = sum(c.connected for c in connected)
        result.connect_s = max(c.connect_s for c in connected)
        for c in connected:
            result.connect_failures.update(c.failures)
        spy = start_profile(self.args.py_spy, self.api.pid, "stream", self.args.py_spy_native) if profile else None
        gc0 = self.api_gc_s()
        gate_t = time.time()
        self._consumer(add=True)
        done = [cast(SwarmDone, self._recv(pipe, self.args.stream_timeout_s + 60)) for pipe in self.pipes[:procs]]
        end_t = max(d.last_finish_t for d in done)
        gc1 = self.api_gc_s()
        if gc0 is not None and gc1 is not None:
            result.api_gc_s = gc1 - gc0
        if spy is not None:
            result.profile = stop_profile(spy)
        time.sleep(0.3)  # the last publishes reach the observer; the sampler passes end_t
        observer.stop()
        for d in done:
            result.failures.update(d.failures)
        result.complete = sum(d.complete for d in done)
        result.client_cpu_s = sum(d.cpu_done_s - c.cpu_s for d, c in zip(done, connected, strict=True))
        self._measure(result, text, done, observer.times, gate_t, end_t)
        result.wall_s = time.monotonic() - wall0
        time.sleep(1.0)  # let the API tear the closed streams down before the next run
        return result

    def _recv(self, pipe: Connection, timeout_s: float) -> object:
        if not pipe.poll(timeout_s):
            raise TimeoutError(f"a client process did not answer within {timeout_s:.0f}s")
        return pipe.recv()

    def _measure(
        self, result: Run, text: str, done: list[SwarmDone], published: dict[int, float], gate_t: float, end_t: float
    ) -> None:
        assert self.http is not None and self.sampler is not None
        sent = [r for r in httpx.get(f"{self.lm_base}/_requests").json() if r["question"] == text]
        if len(sent) != 1 or not sent[0]["chunk_times"]:
            result.note = f"expected one streamed LM request for the job, found {len(sent)}"
            return
        chunk_times: list[float] = sent[0]["chunk_times"]
        chunk_texts: list[str] = sent[0]["chunk_texts"]
        reference = read_events(self.http, result.job_id).events
        tokens = [(e["seq"], e["data"]["field"], e["data"]["text"]) for e in reference if e["type"] == "token"]
        matching = match_tokens(chunk_texts, tokens)
        result.matching = matching
        send_t = {seq: chunk_times[i] for seq, i in matching.chunk_of.items()}
        first_send_t = {seq: chunk_times[i] for seq, i in matching.first_chunk_of.items()}
        total: list[float] = []
        from_publish: list[float] = []
        from_first: list[float] = []
        for d in done:
            for seq, times in d.times.items():
                t_sent = send_t.get(seq)
                if t_sent is None:
                    continue
                t_pub = published.get(seq)
                for t in times:
                    total.append(t - t_sent)
                    from_first.append(t - first_send_t[seq])
                    if t_pub is not None:
                        from_publish.append(t - t_pub)
        if result.clients <= 10:
            result.samples, result.first_samples = total, from_first
        result.deliveries = sum(len(ts) for d in done for seq, ts in d.times.items() if seq > 1)
        result.total = Dist.of(total)
        result.from_first_chunk = Dist.of(from_first)
        result.from_publish = Dist.of(from_publish)
        result.to_publish = Dist.of(published[seq] - t for seq, t in send_t.items() if seq in published)
        start_t = chunk_times[0]
        result.lm_stream_s = chunk_times[-1] - start_t
        result.last_delivery_s = end_t - start_t
        for role in ("api", "clients", "worker", "redis", "lm", "machine", "other"):
            result.cpu[role] = (self.sampler.cores(role, start_t, end_t), self.sampler.peak_cores(role, start_t, end_t))
        result.api_cpu_s = self.sampler.seconds("api", gate_t, end_t)
