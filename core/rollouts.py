"""Which version of a program serves a job: its rollout, a canary by stable hash, promotion and roll back.

A program serves its **stable** version (None: the version as registered,
that is the artifact on disk, or what its MLflow URI names). An operator may
give a **candidate** version a share of its jobs (`percent`): a job goes to
the candidate when the stable hash of its program and its `rollout_key` (a
caller's own key, so one user stays on one version), or else its job id,
falls in the candidate's share of 10,000 buckets. The same job therefore
gets the same version at every attempt, and a caller with a key the same
version at every job, as long as the rollout is unchanged. A job pinned to
a version (`version` in its request, a replay's items) runs that version.

Promoting makes the candidate stable (the old stable is kept, so one roll
back restores it); rolling back drops a candidate, or undoes the last
promotion. An automatic rollback (`auto_rollback`, off unless asked for)
drops the candidate when its failure rate exceeds the stable version's by
`margin` over at least `min_jobs` of its jobs since the canary began
(worker/rollout_guard.py).

The rollout lives in Redis as one JSON document with a revision
(`keys.program_rollout`, written by `rollout_write` in core/lua/rollouts.lua
only if nobody changed it since it was read). The worker decides a job's
version when an attempt starts (worker/job_attempt.py), reading it there.
"""

import hashlib
import time
from typing import Literal, cast

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from core import keys, scripts
from core.metrics import VERSION_JOBS, parse_counters

BUCKETS = 10_000
# Events kept in a rollout's history, newest last.
HISTORY_KEPT = 50


class AutoRollback(BaseModel):
    margin: float = Field(
        0.1, ge=0.0, le=1.0, description="How far above the stable version's failure rate the candidate's may go."
    )
    min_jobs: int = Field(20, ge=1, description="Candidate jobs (since the canary began) before it is judged.")


Action = Literal["canary", "promote", "rollback", "auto_rollback"]


class RolloutConflict(ValueError):
    """The change makes no sense for the rollout as it stands (nothing to promote, nothing to roll back)."""


class RolloutEvent(BaseModel):
    at: float = Field(description="Unix time.")
    action: Action
    version: str | None = Field(description="The version it concerned (None: the one as registered).")
    percent: float | None = None
    reason: str | None = None
    by: str = Field(description="The API key's name, or the worker that decided.")


class VersionCounts(BaseModel):
    """A version's finished jobs at some moment (from the per-version counters, core/metrics.py)."""

    succeeded: int = 0
    failed: int = 0

    @property
    def jobs(self) -> int:
        return self.succeeded + self.failed


class Rollout(BaseModel):
    program: str
    stable: str | None = Field(
        None, description="The version serving every job outside the canary; null: the version as registered."
    )
    candidate: str | None = Field(None, description="The version on trial, if any.")
    percent: float = Field(0.0, ge=0.0, le=100.0, description="The candidate's share of jobs, in percent.")
    auto_rollback: AutoRollback | None = Field(None, description="The automatic rollback rule, if on.")
    started_at: float | None = Field(None, description="When the candidate's canary began (unix time).")
    baseline: dict[str, VersionCounts] = Field(
        default_factory=dict,
        description="Each version's finished jobs when the canary began: the rule judges what came after.",
    )
    previous_stable: str | None = Field(None, description="The stable version before the last promotion.")
    promoted: bool = Field(False, description="Whether a promotion can be rolled back (to `previous_stable`).")
    history: list[RolloutEvent] = Field(default_factory=list, description="What happened, newest last.")

    def noted(self, event: RolloutEvent) -> "Rollout":
        return self.model_copy(update={"history": [*self.history, event][-HISTORY_KEPT:]})


def bucket(program: str, key: str) -> int:
    """A stable place in 0..BUCKETS-1 for `key` (a job id or a caller's rollout key) within one program."""
    digest = hashlib.sha256(f"{program}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def assign(rollout: Rollout | None, job_id: str, rollout_key: str | None) -> str | None:
    """The version a job runs (None: the version as registered)."""
    if rollout is None:
        return None
    share = round(rollout.percent * BUCKETS / 100)
    if rollout.candidate is not None and bucket(rollout.program, rollout_key or job_id) < share:
        return rollout.candidate
    return rollout.stable


def _event(
    action: Action, by: str, version: str | None, percent: float | None = None, reason: str | None = None
) -> RolloutEvent:
    return RolloutEvent(at=time.time(), action=action, version=version, percent=percent, reason=reason, by=by)


def with_canary(
    rollout: Rollout,
    version: str,
    percent: float,
    rule: AutoRollback | None,
    baseline: dict[str, VersionCounts],
    by: str,
) -> Rollout:
    """`version` serves `percent` of the jobs from now (a canary already running is replaced, or re-weighted)."""
    if version == rollout.stable:
        raise RolloutConflict(f"version {version} is already the stable version of {rollout.program}")
    same = version == rollout.candidate
    changed = rollout.model_copy(
        update={
            "candidate": version,
            "percent": percent,
            "auto_rollback": rule,
            # Re-weighting a canary keeps what it has shown so far.
            "started_at": rollout.started_at if same else time.time(),
            "baseline": rollout.baseline if same else baseline,
        }
    )
    return changed.noted(_event("canary", by, version, percent))


def promoted(rollout: Rollout, by: str, replaced: str | None = None) -> Rollout:
    """The candidate serves every job; the stable version it replaces (`replaced`, when the caller knows which
    version that is: a moving MLflow alias) is kept for a roll back."""
    if rollout.candidate is None:
        raise RolloutConflict(f"{rollout.program} has no candidate version to promote")
    changed = rollout.model_copy(
        update={
            "stable": rollout.candidate,
            "previous_stable": replaced if replaced is not None else rollout.stable,
            "promoted": True,
            "candidate": None,
            "percent": 0.0,
            "auto_rollback": None,
            "started_at": None,
            "baseline": {},
        }
    )
    return changed.noted(_event("promote", by, rollout.candidate))


def rolled_back(rollout: Rollout, by: str, reason: str | None = None, automatic: bool = False) -> Rollout:
    """Drop the candidate; with none, undo the last promotion."""
    action: Action = "auto_rollback" if automatic else "rollback"
    cleared: dict[str, object] = {
        "candidate": None,
        "percent": 0.0,
        "auto_rollback": None,
        "started_at": None,
        "baseline": {},
    }
    if rollout.candidate is not None:
        return rollout.model_copy(update=cleared).noted(_event(action, by, rollout.candidate, reason=reason))
    if rollout.promoted:
        changed = rollout.model_copy(
            update={**cleared, "stable": rollout.previous_stable, "previous_stable": None, "promoted": False}
        )
        return changed.noted(_event(action, by, rollout.stable, reason=reason))
    raise RolloutConflict(f"{rollout.program} has no candidate and no promotion to roll back")


def version_counts(counters: dict[str, str], program: str) -> dict[str, VersionCounts]:
    """Each version's finished jobs, from the metrics counters hash (`HGETALL keys.METRICS_COUNTERS`)."""
    found: dict[str, VersionCounts] = {}
    for series in parse_counters(counters)[VERSION_JOBS]:
        if series.labels.get("program") != program:
            continue
        counts = found.setdefault(series.labels["version"], VersionCounts())
        if series.labels.get("status") == "succeeded":
            counts.succeeded += int(series.value)
        elif series.labels.get("status") == "failed":
            counts.failed += int(series.value)
    return found


def rollback_reason(rollout: Rollout, now: dict[str, VersionCounts]) -> str | None:
    """Why the automatic rule rolls the candidate back, judged on the jobs since its canary began; None: not."""
    rule, candidate = rollout.auto_rollback, rollout.candidate
    if rule is None or candidate is None:
        return None
    stable = next((v for v in rollout.baseline if v != candidate), rollout.stable)

    def since(version: str | None) -> VersionCounts:
        before, after = rollout.baseline.get(version or "", VersionCounts()), now.get(version or "", VersionCounts())
        return VersionCounts(succeeded=after.succeeded - before.succeeded, failed=after.failed - before.failed)

    tried, kept = since(candidate), since(stable)
    if tried.jobs < rule.min_jobs:
        return None
    tried_rate = tried.failed / tried.jobs
    kept_rate = kept.failed / kept.jobs if kept.jobs else 0.0
    if tried_rate <= kept_rate + rule.margin:
        return None
    return (
        f"version {candidate} failed {tried.failed} of {tried.jobs} jobs ({tried_rate:.0%}) against "
        f"{kept.failed} of {kept.jobs} ({kept_rate:.0%}) of version {stable}: above the margin of {rule.margin:.0%}"
    )


async def read(redis: aioredis.Redis, program: str) -> tuple[Rollout, int]:
    """The program's rollout and its revision (a fresh one, revision 0, if it never had one)."""
    doc, rev = cast(list[str | None], await redis.hmget(keys.program_rollout(program), ["doc", "rev"]))
    if doc is None:
        return Rollout(program=program), 0
    return Rollout.model_validate_json(doc), int(rev or 0)


async def write(redis: aioredis.Redis, rollout: Rollout, rev: int) -> bool:
    """Store the rollout if it is still at revision `rev`; False if someone changed it since."""
    written = await scripts.acall(
        redis, "rollout_write", [keys.program_rollout(rollout.program)], [rev, rollout.model_dump_json()]
    )
    return int(written) > 0
