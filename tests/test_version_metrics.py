"""What a finished job adds to its program version's counters (worker/metrics.py), read back per version."""

import json

from api.program_versions import stats_by_version
from core import keys
from worker.metrics import outcome_increments


def row(status: str, version: str | None, error_type: str | None = None) -> dict[str, str | None]:
    return {
        "status": status,
        "program": "qa",
        "program_version": version,
        "created_at": "100.0",
        "started_at": "101.0",
        "finished_at": "103.0",
        "attempts": "1",
        "usage": json.dumps({"prompt_tokens": 30, "completion_tokens": 10}),
        "error": json.dumps({"type": error_type}) if error_type else None,
    }


def hashes(rows: list[dict[str, str | None]]) -> tuple[dict[str, str], dict[str, str]]:
    counters: dict[str, float] = {}
    histograms: dict[str, float] = {}
    for r in rows:
        for key, field, amount in outcome_increments(r, "openai/simulated"):
            target = counters if key == keys.METRICS_COUNTERS else histograms
            target[field] = target.get(field, 0) + amount
    return {k: str(v) for k, v in counters.items()}, {k: str(v) for k, v in histograms.items()}


def test_each_version_counts_its_jobs_failures_parse_failures_tokens_and_run_time() -> None:
    counters, histograms = hashes(
        [
            row("succeeded", "1"),
            row("failed", "1", "AdapterParseError"),
            row("failed", "2", "LMTimeoutError"),
            row("succeeded", "2"),
            row("cancelled", "2"),  # never counted against a version
            row("failed", None, "ProgramUnavailable"),  # ran no version
        ]
    )

    stats = stats_by_version(counters, histograms, "qa")

    assert set(stats) == {"1", "2"}
    one, two = stats["1"], stats["2"]
    assert (one.jobs, one.failed, one.failure_rate, one.parse_failures, one.parse_failure_rate) == (2, 1, 0.5, 1, 0.5)
    assert (two.jobs, two.failed, two.parse_failures) == (2, 1, 0)
    assert one.tokens_mean == 40.0 and one.latency_mean_s == 2.0
    assert stats_by_version(counters, histograms, "triage") == {}
