"""What completion webhooks cost jobs, and how soon an event arrives: `python -m bench.webhooks [--jobs 8] [--runs 3]`.

`make up`'s defaults (the embedded model, one interactive worker, the API) with
WEBHOOK_SECRET set and WEBHOOK_ALLOW_PRIVATE=true for a receiver on loopback.
Three runs of the same interactive jobs (`POST /jobs?wait=60`, one at a time),
side by side:

1. **No webhook**: the baseline.
2. **A receiver that answers 200 at once**: job latency against the baseline,
   and the delivery delay, from the job's `finished_at` to the event's arrival.
3. **A receiver that never answers** (it holds each request open): job latency
   against the baseline while every delivery waits out WEBHOOK_TIMEOUT_S and is
   retried; a dead receiver must not slow jobs.

Writes bench/results/webhooks.md with the machine and the command. The
embedded model's own latency varies from job to job by more than a webhook
could cost; `--scripted-lm` runs the same on the scripted LM, whose answers
take the same time every time (bench/results/webhooks-scripted.md).
"""

import argparse
import base64
import secrets
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx

from bench.report import command_line, results_header, table
from harness.processes import (
    Proc,
    free_port,
    python_module,
    start_api,
    start_lm_simulator,
    start_redis,
    start_worker,
    wait_for,
)
from harness.webhook_receiver import Receiver

RESULTS = Path(__file__).parent / "results" / "webhooks.md"
SCRIPTED_RESULTS = Path(__file__).parent / "results" / "webhooks-scripted.md"
QUESTIONS = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "Who wrote Romeo and Juliet?",
    "How many legs does a spider have?",
    "Why do boats float?",
    "What is the largest ocean on Earth?",
    "What is the boiling point of water at sea level in Celsius?",
    "Is it better to read books or watch films?",
]


Records = list[dict[str, object]]


def _jobs(client: httpx.Client, n: int, url: str | None) -> Records:
    """n jobs one at a time, each answered when it finishes; their records, with the client-side latency."""
    records = []
    for i in range(n):
        body: dict[str, object] = {"question": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"}
        if url is not None:
            body["webhook_url"] = url
        started = time.perf_counter()
        answer = client.post("/jobs", params={"wait": 60}, json=body)
        latency = time.perf_counter() - started
        answer.raise_for_status()
        records.append({**answer.json(), "latency_s": latency})
    return records


def _finished_s(record: dict[str, object]) -> float:
    return datetime.fromisoformat(str(record["finished_at"]).replace("Z", "+00:00")).timestamp()


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(n: int, runs: int, scripted: bool) -> list[str]:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    procs: list[Proc] = []
    results: list[tuple[int, Records, Records, Records, list[dict[str, object]]]] = []
    notes: list[str] = []
    try:
        redis_proc, redis_url = start_redis("bench-webhooks-redis")
        if redis_proc is not None:
            procs.append(redis_proc)
        if scripted:
            lm, lm_base = start_lm_simulator("bench-webhooks-lm", "--ttft-s", "0.2", "--tokens-per-s", "100")
            procs.append(lm)
        else:
            port = free_port()
            lm_base = f"http://127.0.0.1:{port}/v1"
            lm = Proc("bench-webhooks-lm", python_module("stack.embedded_lm", "--port", str(port)), {})
            procs.append(lm)
            wait_for(lambda: httpx.get(f"{lm_base}/models").status_code == 200, 300, "the embedded LM", lm)
        env = {
            "REDIS_URL": redis_url,
            **({"LM_MODEL": "openai/simulated"} if scripted else {}),
            "LM_API_BASE": lm_base,
            "LM_CACHE": "false",
            "WEBHOOK_SECRET": secret,
            "WEBHOOK_ALLOW_PRIVATE": "true",
        }
        procs.append(start_worker(env, name="bench-webhooks-worker", concurrency=8))
        api, api_url = start_api(env, name="bench-webhooks-api")
        procs.append(api)
        with (
            httpx.Client(base_url=api_url, timeout=70) as client,
            Receiver() as healthy,
            Receiver(then=None, hold_s=120) as dead,
        ):
            _jobs(client, 2, None)  # warm the model's prompt cache, as a user's first jobs would
            for run in range(1, runs + 1):
                print(f"run {run}: no webhook", file=sys.stderr)
                baseline = _jobs(client, n, None)
                print(f"run {run}: a receiver answering 200", file=sys.stderr)
                answered = _jobs(client, n, healthy.url)
                events = healthy.wait_for(n * run, 30)
                print(f"run {run}: a receiver that never answers", file=sys.stderr)
                silent = _jobs(client, n, dead.url)
                pending = [client.get(f"/jobs/{r['id']}").json()["webhook"] for r in silent]
                results.append((run, baseline, answered, silent, pending))
    finally:
        for proc in reversed(procs):
            proc.stop()
    title = "Completion webhooks: job latency and delivery delay"
    lm_text = (
        "*not the default*: the scripted LM (0.2 s to the first token, 100 tokens/s, the same answer every time), "
        "so only our own work varies"
        if scripted
        else "the embedded model"
    )
    lines = results_header(f"{title}{' (scripted LM)' if scripted else ''}", command_line("bench.webhooks"))
    lines += [
        f"`make up`'s defaults ({lm_text}; one interactive worker, the API, WEBHOOK_TIMEOUT_S 10) with "
        "WEBHOOK_SECRET and WEBHOOK_ALLOW_PRIVATE=true; interactive jobs `POST /jobs?wait=60` one at a time, "
        f"receivers on loopback; {runs} runs of the three, one after the other, on the same stack.",
        "",
    ]
    rows: list[list[object]] = []
    arrival = {e.json()["data"]["id"]: e.at for e in events}  # type: ignore[index]
    delays_ms: list[float] = []
    for run, baseline, answered, silent, pending in results:
        rows += _rows(run, baseline, answered, silent)
        delays_ms += [(arrival[str(r["id"])] - _finished_s(r)) * 1000 for r in answered if str(r["id"]) in arrival]
        attempts = [int(str(p["attempts"])) for p in pending]
        notes.append(
            f"run {run}: the receiver that never answers, when the last job finished: deliveries "
            f"{', '.join(sorted({str(p['status']) for p in pending}))}, {min(attempts)}-{max(attempts)} attempts "
            f"each, last error {pending[0]['last_error']!r} (retried until WEBHOOK_RETRY_WINDOW_S)."
        )
    lines += [
        *table(["run", "", "jobs", "succeeded", "latency p50 (s)", "p90 (s)", "p50 vs no webhook"], rows),
        "",
        f"Delivery delay to the receiver answering 200 (job's `finished_at` to the event's arrival): "
        f"{len(delays_ms)} of {n * runs} events, p50 {statistics.median(delays_ms):.0f} ms, "
        f"max {max(delays_ms):.0f} ms."
        if delays_ms
        else "Delivery delay: no event arrived within 30 s.",
        "",
        *[f"- {note}" for note in notes],
        "",
    ]
    return lines


def _rows(run: int, baseline: Records, answered: Records, silent: Records) -> list[list[object]]:
    base_p50 = statistics.median(float(r["latency_s"]) for r in baseline)  # type: ignore[arg-type]
    rows: list[list[object]] = []
    for name, records in (
        ("no webhook", baseline),
        ("receiver answers 200", answered),
        ("receiver never answers", silent),
    ):
        latencies = [float(r["latency_s"]) for r in records]  # type: ignore[arg-type]
        p50 = statistics.median(latencies)
        rows.append(
            [
                run,
                name,
                len(records),
                sum(r["status"] == "succeeded" for r in records),
                f"{p50:.2f}",
                f"{_p(latencies, 0.9):.2f}",
                f"{p50 / base_p50:.2f}",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8, help="jobs per configuration and run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--scripted-lm",
        action="store_true",
        help="the scripted LM instead of the embedded model: our own cost alone (bench/results/webhooks-scripted.md)",
    )
    args = parser.parse_args(argv)
    results = SCRIPTED_RESULTS if args.scripted_lm else RESULTS
    results.write_text("\n".join(measure(args.jobs, args.runs, args.scripted_lm)))
    print(results.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
