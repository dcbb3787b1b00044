"""The processes the suite measures: redis-server, the LM simulator, the workers, the API, the baseline."""

import contextlib
import os
import time
from typing import Any, cast

import httpx
import redis

from bench import load
from bench.report import CpuSnapshot, proc_rss_bytes
from bench.scenarios.common import BASE, BASE_PATH, OURS, OURS_PATH, SYSTEMS, LMTiming, body_extra, log
from core import keys
from core.queue import make_celery
from core.settings import Settings
from harness.processes import Proc, free_port, python_module, start_api, start_redis, start_worker, wait_for


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
        self.lm = Proc("bench-suite-lm", python_module("harness.lm_simulator", *args), {})
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

    def redis_commands(self) -> int:
        """Commands Redis has run since it started, those scripts call included (INFO commandstats)."""
        assert self.redis is not None
        stats = cast(dict[str, dict[str, int]], self.redis.info("commandstats"))
        return sum(int(entry["calls"]) for entry in stats.values())

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
