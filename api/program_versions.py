"""A program's versions side by side: where each comes from, its role and share, who holds it, how it does.

`GET /programs/{name}/versions` (api/routes/rollouts.py) answers from what
is already in Redis, without reading a single job record:

- the versions: the artifact's on disk, those registered
  (core/program_versions.py), and any other that served jobs (an earlier
  artifact, an MLflow version);
- their role in the rollout (core/rollouts.py): stable or candidate, and the
  share of new jobs each gets now;
- which online workers hold each (their heartbeats, through the catalog);
- how each did, from the per-version counters the workers and the feedback
  function keep (core/metrics.py), which `/metrics` also serves: jobs,
  failure and parse-failure rates, mean run time and tokens, feedback.
"""

from typing import Any, Literal, cast

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from api.feedback import by_version, newest_first
from api.program_catalog import Program
from core import keys, program_versions, rollouts
from core.metrics import (
    VERSION_JOBS,
    VERSION_PARSE_FAILURES,
    VERSION_RUN_TIME,
    VERSION_TOKENS,
    parse_counters,
    parse_histograms,
)
from core.rollouts import Rollout


class VersionStats(BaseModel):
    jobs: int = Field(description="Jobs it ran that succeeded or failed.")
    succeeded: int
    failed: int
    failure_rate: float | None = Field(description="failed / jobs.")
    parse_failures: int = Field(description="Jobs failed because the LM's output could not be parsed.")
    parse_failure_rate: float | None = Field(description="parse_failures / jobs.")
    latency_mean_s: float | None = Field(description="Mean time from a job's (last) start to its end.")
    tokens_mean: float | None = Field(description="Mean LM tokens (prompt and completion) per job.")
    feedback: int = Field(description="Feedback entries on its jobs.")
    feedback_mean: float | None = Field(description="Their mean score, 0 to 1.")
    correction_share: float | None = Field(description="The share of them with a correction.")


_NO_JOBS = VersionStats(
    jobs=0,
    succeeded=0,
    failed=0,
    failure_rate=None,
    parse_failures=0,
    parse_failure_rate=None,
    latency_mean_s=None,
    tokens_mean=None,
    feedback=0,
    feedback_mean=None,
    correction_share=None,
)


class ProgramVersion(BaseModel):
    version: str
    source: Literal["artifact", "registered", "served"] = Field(
        description="`artifact`: the file on disk; `registered`: an optimization's candidate or a registered build; "
        "`served`: neither, but it served jobs (an earlier artifact, an MLflow version)."
    )
    role: Literal["stable", "candidate"] | None = Field(description="Its part in the rollout now.")
    share: float = Field(description="The percent of new jobs it gets now.")
    loaded_by: list[str] = Field(description="Online workers that hold it.")
    metadata: dict[str, Any] | None = Field(description="How and when it was built, from what, its scores.")
    stats: VersionStats


class ProgramVersions(BaseModel):
    program: str
    rollout: Rollout
    versions: list[ProgramVersion] = Field(description="Newest first.")


def _rate(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def stats_by_version(counters: dict[str, str], histograms: dict[str, str], program: str) -> dict[str, VersionStats]:
    """Each version's stats, from the metrics hashes (`keys.METRICS_COUNTERS`, `keys.METRICS_HISTOGRAMS`)."""
    parsed, timed = parse_counters(counters), parse_histograms(histograms)
    ours = [s for s in parsed[VERSION_JOBS] if s.labels.get("program") == program]
    outcomes: dict[str, dict[str, int]] = {}
    for series in ours:
        outcomes.setdefault(series.labels["version"], {})[series.labels["status"]] = int(series.value)

    def per_version(name: str) -> dict[str, float]:
        return {s.labels["version"]: s.value for s in parsed[name] if s.labels.get("program") == program}

    parse_failures, tokens = per_version(VERSION_PARSE_FAILURES), per_version(VERSION_TOKENS)
    run_time = {
        h.labels["version"]: (h.sum, sum(h.buckets))
        for h in timed[VERSION_RUN_TIME]
        if h.labels.get("program") == program
    }
    feedback = by_version(counters, program)
    found = {}
    for version in {*outcomes, *feedback}:
        succeeded, failed = outcomes.get(version, {}).get("succeeded", 0), outcomes.get(version, {}).get("failed", 0)
        jobs = succeeded + failed
        seconds, timed_jobs = run_time.get(version, (0.0, 0.0))
        judged = feedback.get(version)
        found[version] = VersionStats(
            jobs=jobs,
            succeeded=succeeded,
            failed=failed,
            failure_rate=_rate(failed, jobs),
            parse_failures=int(parse_failures.get(version, 0)),
            parse_failure_rate=_rate(parse_failures.get(version, 0), jobs),
            latency_mean_s=_rate(seconds, timed_jobs),
            tokens_mean=_rate(tokens.get(version, 0), jobs),
            feedback=judged.count if judged else 0,
            feedback_mean=judged.mean_score if judged else None,
            correction_share=judged.correction_share if judged else None,
        )
    return found


async def read_stats(redis: aioredis.Redis, program: str) -> dict[str, VersionStats]:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.METRICS_COUNTERS)
        pipe.hgetall(keys.METRICS_HISTOGRAMS)
        counters, histograms = cast(list[dict[str, str]], await pipe.execute())
    return stats_by_version(counters, histograms, program)


def stable_version(program: Program, rollout: Rollout) -> str | None:
    """The version jobs outside the canary get: the rollout's stable one, or the program's as registered."""
    return rollout.stable or program.version


async def side_by_side(redis: aioredis.Redis, program: Program) -> ProgramVersions:
    rollout, _ = await rollouts.read(redis, program.name)
    registered = await program_versions.listed(redis, program.name)
    stats = await read_stats(redis, program.name)
    stable = stable_version(program, rollout)
    on_disk = program.version if program.mlflow_uri is None else None
    names = {*registered, *stats, *program.loaded_by, *(v for v in (on_disk, stable, rollout.candidate) if v)}
    versions = []
    for version in newest_first(list(names)):
        role: Literal["stable", "candidate"] | None = None
        share = 0.0
        if version == rollout.candidate:
            role, share = "candidate", rollout.percent
        elif version == stable:
            role, share = "stable", 100.0 - (rollout.percent if rollout.candidate else 0.0)
        source: Literal["artifact", "registered", "served"] = "served"
        if version in registered:
            source = "registered"
        elif version == on_disk:
            source = "artifact"
        metadata = registered.get(version) or (program.metadata if version == program.version else None)
        versions.append(
            ProgramVersion(
                version=version,
                source=source,
                role=role,
                share=share,
                loaded_by=sorted(program.loaded_by.get(version, [])),
                metadata=metadata,
                stats=stats.get(version, _NO_JOBS),
            )
        )
    return ProgramVersions(program=program.name, rollout=rollout, versions=versions)
