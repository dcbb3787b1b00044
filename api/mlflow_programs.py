"""Programs served from MLflow, as the API knows them: from what the workers publish.

The API cannot load a logged model (that takes dspy and mlflow, which its
image does not have), and there is no artifact to read. So its interface
comes from the workers: a worker that loads a version writes the JSON
Schemas of its signature's fields to Redis (`keys.program_interface`)
before serving it, and every heartbeat says which version each worker
serves and, for a program it cannot serve, why (worker/runtime.py).

Per request, from those (three Redis round trips):

- some online worker serves it: it is available; the version it is known by
  is the newest one an online worker serves (while an alias moves, workers
  switch within `MLFLOW_REFRESH_S` of each other), and its request and
  response models are built from that version's schemas, once per version;
- none does: it is unavailable, with the reasons the workers gave (the
  tracking server cannot be reached, the URI names nothing, the model is not
  a DSPy model, pickles are not allowed), or because no online worker has
  loaded it yet.

So a new version with other fields is validated with its own fields as soon
as a worker serves it, without restarting the API; `/openapi.json`
documents these programs' bodies as plain objects, and `GET /programs/{name}`
has their schemas.
"""

import json
import time
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis

from api.program_catalog import ProgramModels, program_models
from core import keys
from core.mlflow_uris import version_number
from core.settings import Settings


@dataclass(frozen=True)
class WorkerReport:
    worker: str
    versions: dict[str, str]
    problems: dict[str, str]


@dataclass(frozen=True)
class MlflowProgramState:
    version: str | None
    models: ProgramModels | None
    problem: str | None
    # What the workers know of the version: the registered model, its version and run, its source.
    metadata: dict[str, Any] | None
    # Each online worker and the version it serves (None: not this program).
    workers: list[tuple[str, str | None]] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return self.models is not None


async def online_workers(redis: aioredis.Redis, offline_after_s: float) -> list[WorkerReport]:
    since = time.time() - offline_after_s
    workers = cast(list[str], await redis.zrangebyscore(keys.WORKERS, since, "+inf"))
    async with redis.pipeline(transaction=False) as pipe:
        for worker in workers:
            pipe.hmget(keys.worker(worker), ["programs", "problems"])
        listed = cast(list[list[str | None]], await pipe.execute())
    return [
        WorkerReport(worker, json.loads(versions or "{}"), json.loads(problems or "{}"))
        for worker, (versions, problems) in zip(workers, listed, strict=True)
    ]


def _newest(versions: list[str]) -> str:
    """The newest registered version served (a run's model has one version only)."""
    return max(versions, key=lambda v: (version_number(v) or 0, versions.count(v)))


class MlflowPrograms:
    """One per API process: the models built so far, per program and version (a version never changes)."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], tuple[ProgramModels, dict[str, Any]]] = {}

    async def state(self, redis: aioredis.Redis, settings: Settings, name: str) -> MlflowProgramState:
        reports = await online_workers(redis, settings.worker_offline_after_s)
        workers = [(report.worker, report.versions.get(name)) for report in reports]
        served = [version for _, version in workers if version is not None]
        if not served:
            problems = sorted({report.problems[name] for report in reports if name in report.problems})
            if problems:
                problem = "; ".join(problems)
            elif reports:
                problem = "no online worker has loaded it from MLflow yet"
            else:
                problem = "no worker is online to load it from MLflow"
            return MlflowProgramState(None, None, problem, None, workers)
        version = _newest(served)
        built = self._models.get((name, version))
        if built is None:
            raw = await redis.hget(keys.program_interface(name), version)
            if raw is None:
                problem = f"version {version} is served, but its interface is not in Redis (flushed?)"
                return MlflowProgramState(version, None, problem, None, workers)
            try:
                interface = json.loads(raw)
                models = program_models(name, {"input": interface["input"], "output": interface["output"]})
            except (ValueError, KeyError, TypeError) as e:
                problem = f"version {version}'s published interface is unreadable ({type(e).__name__}: {e})"
                return MlflowProgramState(version, None, problem, None, workers)
            built = self._models[(name, version)] = (models, interface.get("metadata") or {})
        models, metadata = built
        return MlflowProgramState(version, models, None, metadata, workers)
