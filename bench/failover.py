"""Kill the Redis primary under load, several times, and count what clients lost (harness/failover.py).

.venv/bin/python -m bench.failover --rounds 3 --runs 3    # writes bench/results/failover.md
.venv/bin/python -m bench.failover --down-after-ms 1000  # failover-down-after-1000.md
"""

import argparse
import json
import statistics
from pathlib import Path

from bench.report import results_header
from harness.failover import Report, run
from harness.redis_ha import DOWN_AFTER_MS

RESULTS = Path(__file__).parent / "results"


_COLUMNS = {
    "accepted": "accepted",
    "lost": "lost",
    "lost_accepted_after_kill_s": "lost ones accepted after a kill (s)",
    "unfinished": "unfinished",
    "failed": "failed",
    "ran_twice": "ran twice",
    "extra_lm_calls": "LM calls beyond one per job",
    "streams": "streams",
    "streams_lost_event": "lost an event",
    "streams_repeated_event": "repeated one",
    "streams_wrong_text": "text differs",
    "batch": "batch counts",
    "promoted_after_s": "promoted after (s)",
    "unavailable_s": "503 for (s)",
    "recovered_after_s": "recovered after (s)",
    "workers_kept_serving": "same processes serve",
}


def _write(reports: list[Report], command: str) -> None:
    lines = [
        *results_header("Failover: the Redis primary killed under load", command),
        f"Primary + 2 replicas + 3 Sentinels on loopback (down-after-milliseconds {reports[0].down_after_ms}), "
        "REDIS_MIN_REPLICAS_ACKED at its default (1),",
        f"{reports[0].submit_rate_per_s:g} jobs/s submitted (half streaming, every fourth followed over SSE), one "
        f"{reports[0].batch_items}-item batch, one interactive and one bulk worker, one API, scripted LM.",
        "",
        "| run | " + " | ".join(_COLUMNS.values()) + " |",
        "|---" * (len(_COLUMNS) + 1) + "|",
    ]
    for i, report in enumerate(reports, 1):
        summary = report.summary()
        lines.append(f"| {i} | " + " | ".join(str(summary[k]) for k in _COLUMNS) + " |")
    unavailable = [u for r in reports for u in r.summary()["unavailable_s"]]
    lines += ["", f"503 per failover: median {statistics.median(unavailable):.1f} s, max {max(unavailable):.1f} s.", ""]
    name = (
        "failover.md"
        if reports[0].down_after_ms == DOWN_AFTER_MS
        else f"failover-down-after-{reports[0].down_after_ms}.md"
    )
    (RESULTS / name).write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="failovers per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=10.0, help="jobs submitted per second")
    parser.add_argument("--down-after-ms", type=int, default=DOWN_AFTER_MS, help="Sentinel's down-after-milliseconds")
    args = parser.parse_args()
    reports = []
    for i in range(args.runs):
        report = run(rounds=args.rounds, rate_per_s=args.rate, down_after_ms=args.down_after_ms)
        print(f"run {i + 1}: {json.dumps(report.summary())}", flush=True)
        reports.append(report)
    _write(
        reports, f".venv/bin/python -m bench.failover --rounds {args.rounds} --runs {args.runs} --rate {args.rate:g}"
    )


if __name__ == "__main__":
    main()
