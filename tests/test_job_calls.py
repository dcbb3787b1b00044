"""The arguments the worker sends its Redis functions, read back the way core/lua/jobs.lua reads them."""

from collections.abc import Sequence

from core import keys
from core.settings import Settings
from worker.job_store import end_args, renew_call

SETTINGS = Settings()


def read_end_args(args: Sequence[object]) -> dict[str, object]:
    """`job_end`'s reading of its ARGV (1-based there, 0-based here)."""
    n = int(str(args[5]))
    events = [(args[6 + 2 * i], args[7 + 2 * i]) for i in range(n)]
    m = int(str(args[6 + 2 * n]))
    fields_at = 7 + 2 * n
    updates = {args[fields_at + 2 * i]: args[fields_at + 2 * i + 1] for i in range(m)}
    metrics = [tuple(args[i : i + 4]) for i in range(fields_at + 2 * m, len(args), 4)]
    return {"head": args[:5], "events": events, "updates": updates, "metrics": metrics}


def test_job_end_reads_back_every_event_update_and_increment_in_order() -> None:
    args = end_args(
        "job-1",
        "tok",
        SETTINGS,
        unstarted=True,
        events=[("token", '{"field":"answer","text":"42"}'), ("result", "{}")],
        updates={"status": "succeeded", "finished_at": "1.5"},
        increments=[(keys.METRICS_COUNTERS, "finished:qa:succeeded", 1), (keys.METRICS_HISTOGRAMS, "run:qa", 0.25)],
    )

    assert read_end_args(args) == {
        "head": ["job-1", "tok", SETTINGS.event_stream_maxlen, SETTINGS.job_ttl_s, "unstarted"],
        "events": [("token", '{"field":"answer","text":"42"}'), ("result", "{}")],
        "updates": {"status": "succeeded", "finished_at": "1.5"},
        "metrics": [("c", "finished:qa:succeeded", "i", "1"), ("h", "run:qa", "f", "0.25")],
    }


def test_a_job_end_with_no_updates_or_metrics_still_says_how_many() -> None:
    args = end_args("job-2", "", SETTINGS, unstarted=False, events=[("error", "{}")], updates={}, increments=[])

    assert read_end_args(args) == {
        "head": ["job-2", "", SETTINGS.event_stream_maxlen, SETTINGS.job_ttl_s, ""],
        "events": [("error", "{}")],
        "updates": {},
        "metrics": [],
    }


def test_a_lease_renewal_names_each_record_and_pairs_each_id_with_its_token() -> None:
    script_keys, args = renew_call({"a": "ta", "b": "tb"}, "99.0")

    assert script_keys == [keys.LEASES, keys.job("a"), keys.job("b")]
    assert args == ["99.0", "a", "ta", "b", "tb"]
