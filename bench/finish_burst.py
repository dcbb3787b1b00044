"""Reproduce jobs lost when hundreds finish at once in one worker (redis-py pool exhausted).

    .venv/bin/python -m bench.finish_burst [--jobs 600] [--concurrency 256] [--tokens-per-s 0]

Starts a private redis-server, the scripted LM (5 s to the first token, then
the whole answer at once), one worker with the threads pool and one API,
submits `--jobs` jobs at once and waits for them. With `-c 256` about 256 jobs
reach their end within a few milliseconds of each other; every one of them
writes to Redis through the worker's one client, whose pool (redis-py's
default, 100 connections, not blocking) raises `MaxConnectionsError` when
more than 100 threads need a connection at the same moment. Prints what
became of every job and what the worker logged; exits 1 if any job did not
succeed. Logs: `test-artifacts/burst-*.log`.
"""

import argparse
import concurrent.futures
import sys
import time
from collections import Counter

import httpx
import redis

from core import keys
from harness.processes import ARTIFACTS, start_api, start_lm_simulator, start_redis, start_worker

TERMINAL = ("succeeded", "failed", "cancelled")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--ttft-s", type=float, default=5.0)
    parser.add_argument("--tokens-per-s", type=float, default=0.0)
    parser.add_argument("--wait-s", type=float, default=75.0, help="how long to wait for every job to finish")
    args = parser.parse_args(argv)

    redis_proc, url = start_redis("burst-redis")
    lm, lm_base = start_lm_simulator("burst-lm", "--ttft-s", str(args.ttft_s), "--tokens-per-s", str(args.tokens_per_s))
    env = {
        "REDIS_URL": url,
        "LM_MODEL": "openai/simulated",
        "LM_API_BASE": lm_base,
        "LM_CACHE": "false",
        "WORKER_CONCURRENCY": str(args.concurrency),
    }
    worker = start_worker(env, name="burst-worker", concurrency=args.concurrency)
    api, api_url = start_api(env, name="burst-api")
    procs = [api, worker, lm, *([redis_proc] if redis_proc else [])]
    client = redis.Redis.from_url(url, decode_responses=True)
    started = time.monotonic()
    try:
        with (
            httpx.Client(base_url=api_url, timeout=30) as http,
            concurrent.futures.ThreadPoolExecutor(32) as pool,
        ):

            def submit(i: int) -> str:
                job_id: str = http.post("/jobs", json={"question": f"burst {i}: what is it?"}).json()["id"]
                return job_id

            ids = list(pool.map(submit, range(args.jobs)))
        statuses: list[str | None] = []
        while time.monotonic() - started < args.wait_s:
            statuses = [client.hget(keys.job(j), "status") for j in ids]  # type: ignore[misc]
            if all(s in TERMINAL for s in statuses):
                break
            time.sleep(1.0)
        attempts = Counter(str(client.hget(keys.job(j), "attempts")) for j in ids)
        stuck = [(j, s) for j, s in zip(ids, statuses, strict=True) if s not in TERMINAL]
        leased = {j for j, s in stuck if client.zscore(keys.LEASES, j) is not None}
        queue_len = client.llen("interactive")
    finally:
        for proc in procs:
            proc.stop()
    log = (ARTIFACTS / "burst-worker.log").read_text(errors="replace").split("\n==== ")[-1]
    print(f"{args.jobs} jobs, worker -c {args.concurrency}, after {time.monotonic() - started:.0f} s:")
    print(f"  status: {dict(Counter(statuses))}; attempts: {dict(attempts)}; messages still queued: {queue_len}")
    for job_id, status in stuck:
        lease = "holds a lease (the reaper will requeue it)" if job_id in leased else "no lease: nothing will run it"
        print(f"  job {job_id}: still {status}, {lease}")
    print(
        f"  worker log: {log.count('MaxConnectionsError: Too many connections')} MaxConnectionsError, "
        f"{log.count('raised unexpected')} tasks raised, {log.count('lost its worker')} lost-worker requeues"
    )
    return 1 if stuck or any(s != "succeeded" for s in statuses) else 0


if __name__ == "__main__":
    sys.exit(main())
