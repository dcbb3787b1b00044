"""Worker-side metrics kept in Redis, and how `/metrics` reads them back.

Workers are separate processes (and containers, scaled with `--scale`), so
instead of each one serving its own Prometheus port, a worker adds what it
observes to two Redis hashes as it finishes a job, and the API turns them
into Prometheus counters and histograms at scrape time: one scrape target
for the whole service, nothing lost when a worker restarts, and the same
numbers whichever pool (threads or prefork) runs the jobs.

A hash field names one series: JSON `[metric name, {label: value}]` for a
counter, `[metric name, {label: value}, part]` for a histogram, where part
is a bucket index (non-cumulative; the reader adds them up) or `"sum"`.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

JOBS_FINISHED = "dspy_jobs_finished"
JOB_RETRIES = "dspy_jobs_retries"
LM_TOKENS = "dspy_jobs_lm_tokens"
QUEUE_WAIT = "dspy_jobs_queue_wait_seconds"
RUN_TIME = "dspy_jobs_run_seconds"
CAPACITY_WAIT = "dspy_jobs_capacity_wait_seconds"
# Counted by the API when a scrape first sees a batch finished (api/metrics.py).
BATCHES_FINISHED = "dspy_jobs_batches_finished"
# Counted by the workers' webhook senders, one per attempt (worker/webhooks.py).
WEBHOOK_DELIVERIES = "dspy_jobs_webhook_deliveries"
# Counted by a worker's supervisor each time it restarts a background loop (worker/supervisor.py).
LOOP_RESTARTS = "dspy_jobs_worker_loop_restarts"
# Program versions side by side (GET /programs/{name}/versions reads them too): counted by the workers as a
# job that ran a version ends ...
VERSION_JOBS = "dspy_jobs_version_jobs"
VERSION_PARSE_FAILURES = "dspy_jobs_version_parse_failures"
VERSION_TOKENS = "dspy_jobs_version_tokens"
VERSION_RUN_TIME = "dspy_jobs_version_run_seconds"
# ... and by the API as feedback is given on one (core/lua/feedback.lua).
FEEDBACK = "dspy_jobs_feedback"
FEEDBACK_SCORE = "dspy_jobs_feedback_score"
FEEDBACK_CORRECTIONS = "dspy_jobs_feedback_corrections"


@dataclass(frozen=True)
class Spec:
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


COUNTERS: dict[str, Spec] = {
    JOBS_FINISHED: Spec("Jobs that reached a final status, by program and status.", ("program", "status")),
    JOB_RETRIES: Spec(
        "Extra attempts of finished jobs (retried LM errors and lost workers), by program.", ("program",)
    ),
    LM_TOKENS: Spec("LM tokens spent by finished jobs, by program, model and kind.", ("program", "model", "kind")),
    BATCHES_FINISHED: Spec("Batches that reached a final status, by status.", ("status",)),
    WEBHOOK_DELIVERIES: Spec(
        "Webhook delivery attempts by outcome: delivered, retrying (failed, tried again later) or failed "
        "(given up: retry window over, 410 Gone, or the receiver no longer allowed).",
        ("outcome",),
    ),
    LOOP_RESTARTS: Spec(
        "Times a worker's background loop ended (crashed, or returned) and was restarted, by loop.", ("loop",)
    ),
    VERSION_JOBS: Spec(
        "Jobs that ran a program version and succeeded or failed, by program, version and status.",
        ("program", "version", "status"),
    ),
    VERSION_PARSE_FAILURES: Spec(
        "Jobs that failed because the LM's output could not be parsed (AdapterParseError), by program and version.",
        ("program", "version"),
    ),
    VERSION_TOKENS: Spec("LM tokens spent by jobs that ran a program version.", ("program", "version")),
    FEEDBACK: Spec(
        "Feedback entries given on jobs, by program and the version that served the job.", ("program", "version")
    ),
    FEEDBACK_SCORE: Spec(
        "Sum of the feedback scores (0 to 1; good is 1, bad 0), by program and version: divided by "
        "dspy_jobs_feedback_total, their mean.",
        ("program", "version"),
    ),
    FEEDBACK_CORRECTIONS: Spec(
        "Feedback entries that carried a correction, by program and version.", ("program", "version")
    ),
}

HISTOGRAMS: dict[str, Spec] = {
    QUEUE_WAIT: Spec(
        "From submission to the start of the job's last attempt (created_at to started_at).",
        ("program",),
        (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0),
    ),
    RUN_TIME: Spec(
        "From the start of the job's last attempt to its end (started_at to finished_at).",
        ("program", "status"),
        (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
    ),
    VERSION_RUN_TIME: Spec(
        "From the start of the job's last attempt to its end, by program and the version that ran it.",
        ("program", "version"),
        (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
    ),
    CAPACITY_WAIT: Spec(
        "Seconds finished jobs waited, taken by a worker, for their LM to have capacity (capacity_wait_s), "
        "by model; jobs that never waited are not observed.",
        ("model",),
        (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0),
    ),
}


def counter_field(name: str, labels: Mapping[str, str]) -> str:
    return json.dumps([name, dict(sorted(labels.items()))], separators=(",", ":"))


def histogram_field(name: str, labels: Mapping[str, str], part: int | str) -> str:
    return json.dumps([name, dict(sorted(labels.items())), part], separators=(",", ":"))


def bucket_index(buckets: Sequence[float], value: float) -> int:
    """The first bucket whose upper bound holds `value`; `len(buckets)` is +Inf."""
    return next((i for i, bound in enumerate(buckets) if value <= bound), len(buckets))


@dataclass
class Series:
    labels: dict[str, str]
    value: float = 0.0


@dataclass
class HistogramSeries:
    labels: dict[str, str]
    buckets: list[float]  # non-cumulative counts; the last one is +Inf
    sum: float = 0.0


def parse_counters(raw: Mapping[str, str]) -> dict[str, list[Series]]:
    """`HGETALL METRICS_COUNTERS` to series per metric; fields it does not know are skipped."""
    found: dict[str, list[Series]] = {name: [] for name in COUNTERS}
    for field, value in raw.items():
        try:
            name, labels = json.loads(field)
            found[name].append(Series(labels, float(value)))
        except (ValueError, KeyError, TypeError):
            continue
    return found


def parse_histograms(raw: Mapping[str, str]) -> dict[str, list[HistogramSeries]]:
    """`HGETALL METRICS_HISTOGRAMS` to one series per metric and label set."""
    by_labels: dict[tuple[str, str], HistogramSeries] = {}
    for field, value in raw.items():
        try:
            name, labels, part = json.loads(field)
            spec = HISTOGRAMS[name]
            key = (name, json.dumps(labels, sort_keys=True))
            series = by_labels.setdefault(key, HistogramSeries(labels, [0.0] * (len(spec.buckets) + 1)))
            if part == "sum":
                series.sum = float(value)
            elif isinstance(part, int) and 0 <= part <= len(spec.buckets):
                series.buckets[part] = float(value)
        except (ValueError, KeyError, TypeError):
            continue
    found: dict[str, list[HistogramSeries]] = {name: [] for name in HISTOGRAMS}
    for (name, _), series in by_labels.items():
        found[name].append(series)
    return found
