"""Programs served from MLflow, as the API knows them: from what the workers publish.

The API cannot load a logged model (that takes dspy and mlflow, which its
image does not have), and there is no artifact to read. So its interface
comes from the workers: a worker that loads a version writes the JSON
Schemas of its signature's fields to Redis (`keys.program_interface`)
before serving it, and every heartbeat says which version each worker
serves and, for a program it cannot serve, why (worker/runtime.py).

Per request, from those (the catalog reads the heartbeats, api/program_catalog.py):

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
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from api.program_models import ProgramModels, program_models
from core import keys
from core.mlflow_uris import version_number


@dataclass(frozen=True)
class MlflowProgramState:
    version: str | None
    models: ProgramModels | None
    problem: str | None
    # What the workers know of the version: the registered model, its version and run, its source.
    metadata: dict[str, Any] | None


def _newest(versions: list[str]) -> str:
    """The newest registered version served (a run's model has one version only)."""
    return max(versions, key=lambda v: (version_number(v) or 0, versions.count(v)))


class MlflowPrograms:
    """One per API process: the models built so far, per program and version (a version never changes)."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], tuple[ProgramModels, dict[str, Any]]] = {}

    async def state(
        self, redis: aioredis.Redis, name: str, workers: list[tuple[str, str | None]], problems: list[str]
    ) -> MlflowProgramState:
        """The program now, from what the online `workers` serve of it (worker, version) and the `problems`
        they reported for it."""
        served = [version for _, version in workers if version is not None]
        if not served:
            if problems:
                problem = "; ".join(sorted(set(problems)))
            elif workers:
                problem = "no online worker has loaded it from MLflow yet"
            else:
                problem = "no worker is online to load it from MLflow"
            return MlflowProgramState(None, None, problem, None)
        version = _newest(served)
        built = self._models.get((name, version))
        if built is None:
            raw = await redis.hget(keys.program_interface(name), version)
            if raw is None:
                problem = f"version {version} is served, but its interface is not in Redis (flushed?)"
                return MlflowProgramState(version, None, problem, None)
            try:
                interface = json.loads(raw)
                models = program_models(name, {"input": interface["input"], "output": interface["output"]})
            except (ValueError, KeyError, TypeError) as e:
                problem = f"version {version}'s published interface is unreadable ({type(e).__name__}: {e})"
                return MlflowProgramState(version, None, problem, None)
            built = self._models[(name, version)] = (models, interface.get("metadata") or {})
        models, metadata = built
        return MlflowProgramState(version, models, None, metadata)
