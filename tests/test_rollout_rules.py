"""The rules of a rollout (core/rollouts.py): who gets the candidate, promotion and roll back."""

import math
import uuid

import pytest

from core import rollouts
from core.rollouts import AutoRollback, Rollout, RolloutConflict, VersionCounts


def canary(percent: float, stable: str | None = None) -> Rollout:
    return rollouts.with_canary(Rollout(program="qa", stable=stable), "2", percent, None, {}, "ops")


def test_a_share_of_job_ids_goes_to_the_candidate_within_the_binomial_bound() -> None:
    n, p = 20_000, 0.2
    rollout = canary(20)

    got = sum(rollouts.assign(rollout, uuid.uuid4().hex, None) == "2" for _ in range(n))

    assert abs(got - n * p) <= 4 * math.sqrt(n * p * (1 - p))


def test_the_same_job_or_the_same_callers_key_always_gets_the_same_version() -> None:
    rollout = canary(50)
    keys = [f"user-{i}" for i in range(200)]

    first = [rollouts.assign(rollout, uuid.uuid4().hex, key) for key in keys]
    again = [rollouts.assign(rollout, uuid.uuid4().hex, key) for key in keys]

    assert first == again
    assert {"2", None} == set(first)  # both versions among 200 callers
    job_id = uuid.uuid4().hex
    assert len({rollouts.assign(rollout, job_id, None) for _ in range(10)}) == 1


def test_no_candidate_or_zero_percent_serves_the_stable_version() -> None:
    assert rollouts.assign(None, "job", None) is None
    assert rollouts.assign(Rollout(program="qa", stable="3"), "job", None) == "3"
    assert {rollouts.assign(canary(0, stable="1"), uuid.uuid4().hex, None) for _ in range(500)} == {"1"}
    assert {rollouts.assign(canary(100, stable="1"), uuid.uuid4().hex, None) for _ in range(500)} == {"2"}


def test_promote_then_roll_back_restores_the_version_before_and_each_step_is_in_the_history() -> None:
    promoted = rollouts.promoted(canary(20, stable=None), "ops")
    assert (promoted.stable, promoted.candidate, promoted.percent) == ("2", None, 0.0)

    back = rollouts.rolled_back(promoted, "ops")

    assert (back.stable, back.candidate, back.promoted) == (None, None, False)
    assert [e.action for e in back.history] == ["canary", "promote", "rollback"]
    with pytest.raises(RolloutConflict):
        rollouts.rolled_back(back, "ops")
    with pytest.raises(RolloutConflict):
        rollouts.promoted(back, "ops")


def test_rolling_back_a_canary_keeps_the_stable_version_and_a_canary_of_the_stable_version_is_refused() -> None:
    running = canary(30, stable="1")

    back = rollouts.rolled_back(running, "worker", reason="failing", automatic=True)

    assert (back.stable, back.candidate, back.percent) == ("1", None, 0.0)
    assert back.history[-1].action == "auto_rollback" and back.history[-1].reason == "failing"
    with pytest.raises(RolloutConflict):
        rollouts.with_canary(back, "1", 10, None, {}, "ops")


def test_re_weighting_a_canary_keeps_when_it_began_and_its_baseline() -> None:
    first = rollouts.with_canary(
        Rollout(program="qa"), "2", 10, AutoRollback(), {"2": VersionCounts(succeeded=3)}, "ops"
    )
    second = rollouts.with_canary(first, "2", 50, AutoRollback(), {"2": VersionCounts(succeeded=9)}, "ops")

    assert second.percent == 50
    assert (second.started_at, second.baseline) == (first.started_at, first.baseline)


def guarded(baseline: dict[str, VersionCounts], margin: float = 0.1, min_jobs: int = 10) -> Rollout:
    rule = AutoRollback(margin=margin, min_jobs=min_jobs)
    return rollouts.with_canary(Rollout(program="qa"), "2", 20, rule, baseline, "ops")


def test_the_rule_rolls_back_a_candidate_failing_above_the_margin_over_enough_jobs_since_its_canary() -> None:
    rollout = guarded({"1": VersionCounts(succeeded=100, failed=50), "2": VersionCounts(failed=30)})

    too_few = {"1": VersionCounts(succeeded=150, failed=50), "2": VersionCounts(succeeded=5, failed=34)}
    within = {"1": VersionCounts(succeeded=190, failed=60), "2": VersionCounts(succeeded=9, failed=31)}
    above = {"1": VersionCounts(succeeded=190, failed=60), "2": VersionCounts(succeeded=6, failed=36)}

    assert rollouts.rollback_reason(rollout, too_few) is None  # 9 candidate jobs since its canary, fewer than 10
    assert rollouts.rollback_reason(rollout, within) is None  # 10 % of 10 against 10 % of 100
    reason = rollouts.rollback_reason(rollout, above)  # 50 % of 12 against 10 % of 100
    assert reason == (
        "version 2 failed 6 of 12 jobs (50%) against 10 of 100 (10%) of version 1: above the margin of 10%"
    )


def test_without_the_rule_or_a_candidate_nothing_is_rolled_back() -> None:
    failing = {"2": VersionCounts(failed=100)}

    assert rollouts.rollback_reason(canary(20), failing) is None
    assert rollouts.rollback_reason(Rollout(program="qa"), failing) is None


def test_version_counts_read_the_per_version_counters_of_one_program() -> None:
    from core.metrics import VERSION_JOBS, counter_field

    raw = {
        counter_field(VERSION_JOBS, {"program": "qa", "version": "1", "status": "succeeded"}): "7",
        counter_field(VERSION_JOBS, {"program": "qa", "version": "1", "status": "failed"}): "2",
        counter_field(VERSION_JOBS, {"program": "triage", "version": "1", "status": "failed"}): "9",
    }

    assert rollouts.version_counts(raw, "qa") == {"1": VersionCounts(succeeded=7, failed=2)}
