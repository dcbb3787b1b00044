"""How long a 100,000-item batch takes to store and to enqueue.

    .venv/bin/python -m bench.batch_enqueue [--items 100000]

Starts a private redis-server and one API process (no worker), submits one
batch, and times (1) `POST /batches` until its 202, and (2) the expansion
into jobs and bulk-queue messages, run in this process exactly as the bulk
worker runs it (worker/batches.py), with no worker consuming meanwhile.
Prints a Markdown report and writes it to `bench/results/batch_enqueue.md`.
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import httpx
import redis

from stack.processes import start_api, start_redis

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    args = parser.parse_args()

    redis_proc, url = start_redis("bench-redis")
    env = {"REDIS_URL": url, "LM_MODEL": "openai/simulated", "LM_API_BASE": "http://127.0.0.1:9/v1"}
    api_proc, api = start_api(env, name="bench-api")
    try:
        items = [
            {"question": f"Question number {i}: what is {i} plus {i}?", "custom_id": f"row-{i}"}
            for i in range(args.items)
        ]
        with httpx.Client(base_url=api, timeout=600) as client:
            started = time.perf_counter()
            response = client.post("/batches", json={"items": items})
            submit_s = time.perf_counter() - started
        response.raise_for_status()
        batch_id = response.json()["id"]
        body_mb = len(response.request.content) / 1e6

        os.environ.update(env)
        from worker.batches import BatchExpander

        from core.settings import get_settings
        from worker.celery_app import app

        client_redis = redis.Redis.from_url(url, decode_responses=True)
        started = time.perf_counter()
        BatchExpander(client_redis, get_settings(), app).expand(batch_id)
        expand_s = time.perf_counter() - started
        queued = client_redis.llen(get_settings().bulk_queue)
        memory_mb = int(client_redis.info("memory")["used_memory"]) / 1e6
    finally:
        api_proc.stop()
        if redis_proc:
            redis_proc.stop()

    report = f"""# Batch enqueue benchmark

Command: `{" ".join([Path(sys.executable).name, "-m", "bench.batch_enqueue", *sys.argv[1:]])}`
Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}
Date: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}

| what | figure |
|---|---|
| items | {args.items:,} ({body_mb:.1f} MB of JSON) |
| `POST /batches` until 202 (validate + store in one transaction) | {submit_s:.2f} s |
| expansion into jobs + bulk-queue messages (one process) | {expand_s:.2f} s ({args.items / expand_s:,.0f} items/s) |
| messages on the bulk queue afterwards | {queued:,} |
| Redis memory afterwards | {memory_mb:,.0f} MB |
"""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "batch_enqueue.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
