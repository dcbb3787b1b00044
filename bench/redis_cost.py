"""What one job costs Redis (commands and CPU), and so how many jobs/s one Redis primary carries.

A private redis-server serves one API, one interactive and one bulk worker with
`make up`'s defaults, against the scripted LM answering at once (so the run is
bounded by our own work, not the LM). For each kind of job (interactive
non-streaming, interactive streaming, one batch item) N jobs run; Redis's
`INFO commandstats` and its main thread's CPU time are read before and after,
less what the idle stack spends in the same time (heartbeats, the reaper,
blocking pops timing out). A second pass runs the non-streaming jobs with a
replica and REDIS_MIN_REPLICAS_ACKED=1 to show what the `WAIT` costs.

    .venv/bin/python -m bench.redis_cost --jobs 300    # writes bench/results/redis_ceiling.md
"""

import argparse
import concurrent.futures
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from bench.report import results_header
from harness.processes import Proc, start_api, start_lm_simulator, start_redis, start_worker, wait_for

RESULTS = Path(__file__).parent / "results" / "redis_ceiling.md"
_IDLE_S = 10.0


@dataclass
class Cost:
    kind: str
    jobs: int
    seconds: float
    commands_per_job: float
    cpu_ms_per_job: float
    top: list[tuple[str, float]]  # command, calls per job
    submit_p50_ms: float

    @property
    def ceiling_jobs_per_s(self) -> float:
        return 1000.0 / self.cpu_ms_per_job


def _cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys_main_thread"]) + float(info["used_cpu_user_main_thread"])


def _calls(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in client.info("commandstats").items()}


def _idle_rates(client: redis.Redis) -> tuple[dict[str, float], float]:
    calls, cpu = _calls(client), _cpu_s(client)
    time.sleep(_IDLE_S)
    after = _calls(client)
    rates = {k: (after.get(k, 0) - calls.get(k, 0)) / _IDLE_S for k in after}
    return rates, (_cpu_s(client) - cpu) / _IDLE_S


def _run_jobs(api: str, n: int, stream: bool, tag: str) -> list[float]:
    """Submit n jobs from 16 threads and wait for all to finish; the submit latencies in ms."""

    def one(i: int) -> float:
        with httpx.Client(base_url=api, timeout=60) as client:
            started = time.perf_counter()
            response = client.post("/jobs", json={"question": f"{tag} {i}", "stream": stream})
            latency = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            job_id = response.json()["id"]
            while client.get(f"/jobs/{job_id}", params={"wait": 30}).json()["status"] != "succeeded":
                pass
            return latency

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(n)))


def _run_batch(api: str, n: int, tag: str) -> list[float]:
    with httpx.Client(base_url=api, timeout=60) as client:
        started = time.perf_counter()
        response = client.post("/batches", json={"items": [{"question": f"{tag} {i}"} for i in range(n)]})
        latency = (time.perf_counter() - started) * 1000
        response.raise_for_status()
        batch_id = response.json()["id"]
        wait_for(lambda: client.get(f"/batches/{batch_id}").json()["status"] == "completed", 600, "the batch")
    return [latency]


def _measure(
    client: redis.Redis, idle: tuple[dict[str, float], float], kind: str, run: Callable[[], list[float]], n: int
) -> Cost:
    rates, idle_cpu = idle
    calls, cpu, started = _calls(client), _cpu_s(client), time.monotonic()
    latencies = run()
    seconds = time.monotonic() - started
    after, cpu_after = _calls(client), _cpu_s(client)
    per_job = {k: max(0.0, after.get(k, 0) - calls.get(k, 0) - rates.get(k, 0.0) * seconds) / n for k in after}
    cpu_ms = max(0.0, cpu_after - cpu - idle_cpu * seconds) * 1000 / n
    top = sorted(((k, v) for k, v in per_job.items() if v >= 0.05), key=lambda kv: -kv[1])
    return Cost(kind, n, seconds, sum(per_job.values()), cpu_ms, top, statistics.median(latencies))


def _stack(extra_env: dict[str, str], replica: bool) -> tuple[list[Proc], redis.Redis, str]:
    procs: list[Proc] = []
    primary, url = start_redis("redis-cost")
    assert primary is not None
    procs.append(primary)
    if replica:
        replica_proc, replica_url = start_redis("redis-cost-replica")
        assert replica_proc is not None
        procs.append(replica_proc)
        redis.Redis.from_url(replica_url).replicaof("127.0.0.1", url.rsplit(":", 1)[1].split("/")[0])
    lm, lm_api_base = start_lm_simulator("lm-cost")
    procs.append(lm)
    env = {"REDIS_URL": url, "LM_MODEL": "openai/simulated", "LM_API_BASE": lm_api_base, "LM_CACHE": "false"}
    env |= extra_env
    procs.append(start_worker(env, name="worker-cost"))
    procs.append(start_worker(env, name="worker-cost-bulk", queues="bulk"))
    api_proc, api = start_api(env, name="api-cost")
    procs.append(api_proc)
    return procs, redis.Redis.from_url(url, decode_responses=True), api


def measure(jobs: int) -> tuple[list[Cost], list[Cost]]:
    procs, client, api = _stack({}, replica=False)
    try:
        _run_jobs(api, 20, False, "warm-up")
        idle = _idle_rates(client)
        costs = [
            _measure(client, idle, "interactive, stream:false", lambda: _run_jobs(api, jobs, False, "plain"), jobs),
            _measure(client, idle, "interactive, streaming", lambda: _run_jobs(api, jobs, True, "streamed"), jobs),
            _measure(client, idle, "batch item", lambda: _run_batch(api, jobs, "item"), jobs),
        ]
    finally:
        for proc in reversed(procs):
            proc.stop()
    waits = []
    for acked in ("0", "1"):
        procs, client, api = _stack({"REDIS_MIN_REPLICAS_ACKED": acked}, replica=True)
        try:
            _run_jobs(api, 20, False, "warm-up")
            idle = _idle_rates(client)
            kind = f"stream:false, one replica, REDIS_MIN_REPLICAS_ACKED={acked}"
            waits.append(
                _measure(client, idle, kind, functools.partial(_run_jobs, api, jobs, False, f"acked{acked}"), jobs)
            )
        finally:
            for proc in reversed(procs):
                proc.stop()
    return costs, waits


def wait_round_trip(writes: int = 3000) -> tuple[float, float, float, float]:
    """p50 and p99 of one write alone and of one write + WAIT 1, in microseconds, on an idle primary + replica."""
    procs: list[Proc] = []
    try:
        primary, url = start_redis("redis-wait")
        replica, replica_url = start_redis("redis-wait-replica")
        assert primary is not None and replica is not None
        procs += [primary, replica]
        redis.Redis.from_url(replica_url).replicaof("127.0.0.1", url.rsplit(":", 1)[1].split("/")[0])
        client = redis.Redis.from_url(url)
        wait_for(lambda: client.wait(1, 1000) >= 1, 20, "the replica")
        figures = []
        for wait in (False, True):
            latencies = []
            for i in range(writes):
                started = time.perf_counter()
                with client.pipeline(transaction=False) as pipe:
                    pipe.set(f"k{i}", "v")
                    if wait:
                        pipe.execute_command("WAIT", 1, 1000)
                    pipe.execute()
                latencies.append((time.perf_counter() - started) * 1e6)
            latencies.sort()
            figures += [latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]]
        return figures[0], figures[1], figures[2], figures[3]
    finally:
        for proc in reversed(procs):
            proc.stop()


def _table(costs: list[Cost]) -> list[str]:
    lines = [
        "| job | jobs | Redis commands per job | Redis CPU per job (ms) | ceiling of one primary (jobs/s) "
        "| POST p50 (ms) | commands per job, most called |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in costs:
        top = ", ".join(f"{name} {calls:.1f}" for name, calls in c.top[:6])
        lines.append(
            f"| {c.kind} | {c.jobs} | {c.commands_per_job:.1f} | {c.cpu_ms_per_job:.3f} | "
            f"{c.ceiling_jobs_per_s:,.0f} | {c.submit_p50_ms:.1f} | {top} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    args = parser.parse_args()
    costs, waits = measure(args.jobs)
    alone_p50, alone_p99, waited_p50, waited_p99 = wait_round_trip()
    command = f".venv/bin/python -m bench.redis_cost --jobs {args.jobs}"
    lines = [
        *results_header("What a job costs Redis, and the ceiling of one primary", command),
        "One API, one interactive and one bulk worker with make up's defaults, scripted LM answering at once;",
        "Redis figures are deltas of INFO commandstats and the main thread's CPU, less the idle stack's rate.",
        "The ceiling is 1 / (Redis CPU per job): one Redis main thread spends a whole core on nothing else.",
        "",
        *_table(costs),
        "",
        "## What `WAIT` costs (a primary with one replica on loopback)",
        "",
        *_table(waits),
        "",
        "One write alone against one write followed by `WAIT 1` in the same round trip, 3,000 in a row, idle",
        f"primary and replica: p50 {alone_p50:.0f} us against {waited_p50:.0f} us, "
        f"p99 {alone_p99:.0f} us against {waited_p99:.0f} us.",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
