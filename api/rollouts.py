"""Changing a program's rollout from the API: what a canary may name, and writing it only over what was read.

The rules of a rollout are core/rollouts.py's; here, what the API checks and
how it writes. A canary must name a version some online worker holds (its
heartbeat says so, through the catalog): a version no worker has loaded is
a 422 listing those that are, so an operator never sends a share of the jobs
to a version that would fail them all. Every change is read, applied, and
written only if nobody changed the rollout in between (`rollout_write`); a
lost race is read and applied again.
"""

from collections.abc import Callable
from typing import cast

import redis.asyncio as aioredis
from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field

from api import mlflow_aliases
from api.program_catalog import Program
from api.program_versions import stable_version
from core import keys, rollouts
from core.rollouts import AutoRollback, Rollout, RolloutConflict, VersionCounts
from core.settings import Settings

# Tries of one change against concurrent ones before answering 409.
_TRIES = 5


class RolloutUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=200, description="The candidate version (GET .../versions).")
    percent: float = Field(ge=0.0, le=100.0, description="Its share of the program's jobs, 0 to 100.")
    auto_rollback: AutoRollback | None = Field(
        None, description="Roll it back by itself when its failure rate exceeds the stable version's (off if null)."
    )


def check_loaded(program: Program, version: str) -> None:
    """422 unless some online worker holds `version`."""
    if version not in program.loaded_by:
        loaded = sorted(program.loaded_by)
        raise HTTPException(
            422, f"version {version!r} of {program.name} is not loaded by any worker; loaded versions: {loaded}"
        )


async def change(redis: aioredis.Redis, program: str, apply: Callable[[Rollout], Rollout]) -> Rollout:
    """`apply` to the rollout as it stands, written only over what was read; 409 when it makes no sense."""
    for _ in range(_TRIES):
        rollout, rev = await rollouts.read(redis, program)
        try:
            changed = apply(rollout)
        except RolloutConflict as e:
            raise HTTPException(409, str(e)) from e
        if await rollouts.write(redis, changed, rev):
            return changed
    raise HTTPException(409, f"the rollout of {program} kept changing while this was applied; try again")


async def canary(redis: aioredis.Redis, program: Program, update: RolloutUpdate, by: str) -> Rollout:
    check_loaded(program, update.version)
    counters = cast(dict[str, str], await redis.hgetall(keys.METRICS_COUNTERS))
    now = rollouts.version_counts(counters, program.name)

    def apply(rollout: Rollout) -> Rollout:
        stable = stable_version(program, rollout)
        # Both versions, even without a job yet: the automatic rule reads which one was stable from here.
        baseline = {v: now.get(v, VersionCounts()) for v in (update.version, stable) if v is not None}
        return rollouts.with_canary(rollout, update.version, update.percent, update.auto_rollback, baseline, by)

    return await change(redis, program.name, apply)


async def promote(redis: aioredis.Redis, settings: Settings, program: Program, by: str) -> Rollout:
    """The candidate serves everything; for a program served by an MLflow alias, the alias moves to it too."""
    rollout, _ = await rollouts.read(redis, program.name)
    replaced = None
    if program.mlflow_uri is not None:
        replaced = stable_version(program, rollout)
        alias = mlflow_aliases.moved_alias(program.mlflow_uri, rollout.candidate)
        if alias is not None:
            await mlflow_aliases.move(settings, *alias)
    return await change(redis, program.name, lambda r: rollouts.promoted(r, by, replaced))


async def rollback(redis: aioredis.Redis, settings: Settings, program: Program, by: str) -> Rollout:
    """Drop the candidate, or undo the last promotion (moving an MLflow alias back where it was)."""
    rollout, _ = await rollouts.read(redis, program.name)
    if program.mlflow_uri is not None and rollout.candidate is None and rollout.promoted:
        alias = mlflow_aliases.moved_alias(program.mlflow_uri, rollout.previous_stable)
        if alias is not None:
            await mlflow_aliases.move(settings, *alias)
    return await change(redis, program.name, lambda r: rollouts.rolled_back(r, by))
