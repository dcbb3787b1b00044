"""Load test: 1,000 concurrent submitters for 60 s against one API and one worker.

    .venv/bin/python -m bench.load_test [--clients 1000] [--duration-s 60]

Starts a private redis-server, the scripted LM (about 1 s per answer), one
interactive worker (threads pool) and one API process, all on 127.0.0.1.
Each client loops: `POST /jobs?wait=60` with an Idempotency-Key (retrying
the same key on a connection error, as a careful client would), polling the
job if it is not done by then, until the duration is over, so at most one
job per client is in flight. Afterwards every accepted job id is read back:
a job that is not `succeeded` within two minutes of the end counts as lost. Reports
5xx responses, other errors, throughput and latency percentiles, and writes
`bench/results/load.md`.
"""

import argparse
import asyncio
import os
import platform
import resource
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

from harness.processes import start_api, start_lm_simulator, start_redis, start_worker

RESULTS = Path(__file__).parent / "results"


async def client_loop(
    http: httpx.AsyncClient, stop_at: float, accepted: set[str], codes: Counter[str], latencies: list[float]
) -> None:
    while time.monotonic() < stop_at:
        key = uuid.uuid4().hex
        body = {"question": f"load {key}"}
        for _ in range(5):
            started = time.monotonic()
            try:
                response = await http.post("/jobs", params={"wait": 60}, json=body, headers={"Idempotency-Key": key})
            except httpx.HTTPError as e:
                codes[type(e).__name__] += 1
                await asyncio.sleep(0.5)
                continue
            codes[str(response.status_code)] += 1
            if response.status_code in (200, 202):
                job = response.json()
                accepted.add(job["id"])
                # Not done within `wait`: keep following this job rather than
                # piling another one on top of it.
                while job["status"] not in ("succeeded", "failed", "cancelled"):
                    await asyncio.sleep(1)
                    job = (await http.get(f"/jobs/{job['id']}")).json()
                latencies.append(time.monotonic() - started)
            break


async def run(api: str, clients: int, duration_s: float) -> tuple[set[str], Counter[str], list[float], float]:
    accepted: set[str] = set()
    codes: Counter[str] = Counter()
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=api, timeout=90, limits=limits) as http:
        started = time.monotonic()
        stop_at = started + duration_s
        await asyncio.gather(*(client_loop(http, stop_at, accepted, codes, latencies) for _ in range(clients)))
        elapsed_s = time.monotonic() - started
    return accepted, codes, latencies, elapsed_s


def lost_jobs(api: str, ids: set[str], timeout_s: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout_s
    pending = set(ids)
    with httpx.Client(base_url=api, timeout=30) as http:
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                if http.get(f"/jobs/{job_id}").json()["status"] == "succeeded":
                    pending.discard(job_id)
            if pending:
                time.sleep(1)
    return sorted(pending)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) >= 2 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--duration-s", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=256, help="worker threads")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    redis_proc, url = start_redis("bench-redis")
    lm_proc, lm_base = start_lm_simulator("bench-lm", "--ttft-s", "0.3", "--tokens-per-s", "60")
    env = {
        "REDIS_URL": url,
        "LM_MODEL": "openai/simulated",
        "LM_API_BASE": lm_base,
        "LM_CACHE": "false",
        "WORKER_CONCURRENCY": str(args.concurrency),
        "API_REDIS_MAX_CONNECTIONS": "2000",
    }
    worker = start_worker(env, name="bench-worker", concurrency=args.concurrency)
    api_proc, api = start_api(env, name="bench-api")
    try:
        accepted, codes, latencies, elapsed_s = asyncio.run(run(api, args.clients, args.duration_s))
        lost = lost_jobs(api, accepted)
    finally:
        for proc in (api_proc, worker, lm_proc):
            proc.stop()
        if redis_proc:
            redis_proc.stop()

    five_xx = sum(n for code, n in codes.items() if code.startswith("5"))
    report = f"""# Load test: {args.clients:,} concurrent submitters for {args.duration_s:g} s

Command: `{" ".join([Path(sys.executable).name, "-m", "bench.load_test", *sys.argv[1:]])}`
Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}
Date: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
Setup: one API process, one worker process (threads pool, {args.concurrency} threads), scripted LM
(0.3 s to first token, 60 tokens/s, about 1 s per answer), private redis-server; load generator in
the same machine (httpx.AsyncClient), each client `POST /jobs?wait=60` with an Idempotency-Key.

| what | figure |
|---|---|
| responses by status | {", ".join(f"{code}: {n:,}" for code, n in sorted(codes.items()))} |
| 5xx responses | {five_xx} |
| jobs accepted | {len(accepted):,} |
| jobs lost (not `succeeded` two minutes after the end) | {len(lost)} |
| completed jobs/s | {len(latencies) / elapsed_s:,.1f} |
| end-to-end latency p50 / p99 (submit to result) | {pct(latencies, 50):.2f} s / {pct(latencies, 99):.2f} s |
"""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "load.md").write_text(report)
    print(report)
    if lost:
        print("lost:", lost[:20])


if __name__ == "__main__":
    main()
