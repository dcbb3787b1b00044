"""Listing (`GET /jobs`): the time of one page with 10,000 jobs stored and with 100,000.

A private redis-server and API; the jobs are written through the same Redis
functions the API and the workers call (harness/job_data.py), two keys, two
programs, five statuses. Then each filter set is asked for its first page
and for a page deep in the listing (after following cursors), `--rounds`
times each, by an operator's key and by one key: the median and p95 of a
page's round trip, and the ratio of 100k to 10k. A page reads indexes, never
every record, so the ratio should stay near 1.

    .venv/bin/python -m bench.listing    # writes bench/results/listing.md
"""

import argparse
import asyncio
import hashlib
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from api.auth import owner_id
from bench.report import results_header
from harness.job_data import make_jobs
from harness.processes import start_api, start_redis

RESULTS = Path(__file__).parent / "results"
KEYS = {name: f"dj_{name}_{uuid.uuid4().hex}" for name in ("alice", "bob", "ops")}
FILTERS: list[tuple[str, str, dict[str, str]]] = [
    ("every job, operator's key", "ops", {}),
    ("status=failed, one key", "alice", {"status": "failed"}),
    ("status + program, one key", "alice", {"status": "succeeded", "program": "triage"}),
    ("error type, operator's key", "ops", {"error": "LMTimeoutError"}),
]


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _timed_pages(api: str, key: str, params: dict[str, str], rounds: int, depth: int) -> tuple[list[float], int]:
    """Round trips of the first page and of the page `depth` pages in, `rounds` times; and the total."""
    times: list[float] = []
    total = 0
    with httpx.Client(base_url=api, timeout=30, headers={"Authorization": f"Bearer {KEYS[key]}"}) as client:
        cursor = None
        for _ in range(depth):  # a cursor deep in the listing
            body = client.get("/jobs", params={**params, "limit": 50, **({"cursor": cursor} if cursor else {})}).json()
            total = body["total"] or total
            cursor = body["next_cursor"] or cursor
        for _ in range(rounds):
            for page_cursor in (None, cursor):
                started = time.perf_counter()
                response = client.get(
                    "/jobs", params={**params, "limit": 50, **({"cursor": page_cursor} if page_cursor else {})}
                )
                times.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
    return times, total


def measure(count: int, rounds: int) -> dict[str, Any]:
    redis_proc, url = start_redis(f"redis-bench-listing-{count}")
    assert redis_proc is not None
    owners = {name: owner_id(bytes.fromhex(_digest(KEYS[name]))) for name in ("alice", "bob")}
    started = time.perf_counter()
    asyncio.run(make_jobs(url, count, time.time() - count, owners))
    made_s = time.perf_counter() - started
    env = {
        "REDIS_URL": url,
        "LM_MODEL": "openai/simulated",
        "LM_API_BASE": "http://127.0.0.1:9/v1",
        "API_KEYS": f"alice:{_digest(KEYS['alice'])},bob:{_digest(KEYS['bob'])}",
        "API_ADMIN_KEYS": f"ops:{_digest(KEYS['ops'])}",
    }
    api_proc, api = start_api(env, name=f"api-bench-listing-{count}")
    try:
        rows = {}
        for label, key, params in FILTERS:
            times, total = _timed_pages(api, key, params, rounds, depth=5)
            rows[label] = {"median_ms": statistics.median(times), "p95_ms": _p95(times), "matching": total}
        return {"jobs": count, "made_s": made_s, "rows": rows}
    finally:
        api_proc.stop()
        redis_proc.stop()


def _p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--counts", default="10000,100000")
    args = parser.parse_args()
    runs = [measure(int(count), args.rounds) for count in args.counts.split(",")]
    small, large = runs[0], runs[-1]
    command = f".venv/bin/python -m bench.listing --rounds {args.rounds} --counts {args.counts}"
    lines = [
        *results_header("Listing: one page of GET /jobs at 10k and 100k jobs stored", command),
        f"Jobs written through the Redis functions (two keys, two programs, five statuses): "
        f"{small['jobs']:,} in {small['made_s']:.0f} s, {large['jobs']:,} in {large['made_s']:.0f} s. "
        f"Each filter: its first page and a page five pages in, 50 jobs a page, {args.rounds} times each.",
        "",
        f"| filter | matching at {small['jobs']:,} | median ms | p95 ms | matching at {large['jobs']:,} | "
        "median ms | p95 ms | median ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in small["rows"]:
        a, b = small["rows"][label], large["rows"][label]
        lines.append(
            f"| {label} | {a['matching']:,} | {a['median_ms']:.1f} | {a['p95_ms']:.1f} | {b['matching']:,} | "
            f"{b['median_ms']:.1f} | {b['p95_ms']:.1f} | {b['median_ms'] / a['median_ms']:.2f}x |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "listing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
