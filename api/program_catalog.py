"""The programs this API serves, whatever their source: one catalog every route asks.

`catalog.program(name)` answers a program as it stands now, the same way
for every source and every caller (the typed routes, the routes of programs
from MLflow, the OpenAI-compatible routes, `GET /programs` and so the page):
its request and response models, its version, whether it can be served and
why not. An unknown name is `UnknownProgram`.

- **From an artifact.** Its models are built from the artifact's schemas
  once, when the app is created: they become routes and OpenAPI components,
  which FastAPI fixes at startup. So a new artifact *version* is picked up
  by the workers alone (and shown by `GET /programs`, which reads the file
  again when it changed), while a change of a program's fields, which comes
  with new code anyway, needs the API restarted too.
- **From MLflow.** No artifact here: its models are built from what the
  workers publish, when it is asked for (api/mlflow_programs.py).

A program whose artifact is missing or unreadable is still listed, with the
reason, and its submissions are refused with 503 and that reason; the
default program must be servable, or the API does not start (its `/jobs`
and `/batches` bodies are its input fields).
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from pydantic import BaseModel, Field, create_model

from api.mlflow_programs import MlflowPrograms
from api.program_models import ProgramModels, program_models
from api.schemas import OVERRIDE_NAMES, BatchOptions, CustomId, JobOptions
from core import keys
from core.programs import (
    ArtifactError,
    ProgramEntry,
    artifact_path,
    read_artifact_info,
    registered_programs,
)
from core.settings import Settings


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    entry: ProgramEntry
    artifact: Path
    models: ProgramModels | None
    # Why the program cannot be served, when it cannot.
    problem: str | None

    @property
    def mlflow_uri(self) -> str | None:
        """Set for a program served from MLflow: its models come from the workers (api/mlflow_programs.py)."""
        return self.entry.mlflow_uri


class UnknownProgram(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no program named {name!r}; known: {known}")
        self.name = name
        self.known = known


@dataclass(frozen=True)
class Program:
    """A program as it stands now, whatever its source."""

    name: str
    default: bool
    entry: ProgramEntry
    models: ProgramModels | None  # None: it cannot be served now
    problem: str | None  # why not, when it cannot
    # The artifact's version on disk, or the newest version an online worker serves (MLflow).
    version: str | None
    # The artifact's metadata (when and how it was built, ...), or what the workers know of the MLflow version.
    metadata: dict[str, Any] | None
    # Each online worker and the version of this program it serves (None: none).
    workers: list[tuple[str, str | None]] = field(default_factory=list)
    # Every version some online worker holds (it serves it by default, or has loaded it for a rollout or a
    # pinned job), and which workers hold it.
    loaded_by: dict[str, list[str]] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.models is not None

    @property
    def mlflow_uri(self) -> str | None:
        return self.entry.mlflow_uri


@dataclass(frozen=True)
class _Worker:
    """What an online worker's heartbeat says of the programs (worker/engine.py)."""

    name: str
    serves: dict[str, str]  # program -> the version it serves by default
    problems: dict[str, str]  # program -> why it cannot serve it
    holds: dict[str, list[str]]  # program -> every version it has loaded


@dataclass(frozen=True)
class DefaultBodies:
    """The flat bodies of `/jobs` and `/batches`: the default program's input fields at the top level."""

    job_create: type[BaseModel]
    batch_create: type[BaseModel]


class Catalog:
    def __init__(self, settings: Settings) -> None:
        self.default = settings.default_program
        self._offline_after_s = settings.worker_offline_after_s
        self.programs: dict[str, CatalogEntry] = {}
        for name, entry in registered_programs(settings).items():
            path = artifact_path(settings, name, entry)
            try:
                if entry.mlflow_uri is not None:
                    models: ProgramModels | None = None
                    problem: str | None = (
                        f"served from MLflow ({entry.mlflow_uri}): its fields are known once a worker loaded it, "
                        f"at /programs/{name}"
                    )
                else:
                    models = program_models(name, read_artifact_info(name, path).signature_schemas(name))
                    problem = None
            except ArtifactError as e:
                models, problem = None, str(e)
            self.programs[name] = CatalogEntry(name, entry, path, models, problem)
        default = self.programs[self.default]
        if default.models is None:
            raise ArtifactError(f"the default program cannot be served: {default.problem}")
        self.default_bodies = _default_bodies(default.models)
        self._mlflow = MlflowPrograms()
        self._artifacts: dict[Path, tuple[float, str, dict[str, Any]]] = {}  # path -> (mtime, version, metadata)

    @property
    def default_models(self) -> ProgramModels:
        models = self.programs[self.default].models
        assert models is not None  # checked in __init__
        return models

    def typed(self) -> dict[str, ProgramModels]:
        """The programs whose models are known at startup (from artifacts): they get typed routes."""
        return {name: entry.models for name, entry in self.programs.items() if entry.models is not None}

    def learned_from_workers(self) -> list[str]:
        """The programs whose models the API learns from the workers, when asked (MLflow)."""
        return [name for name, entry in self.programs.items() if entry.mlflow_uri is not None]

    async def program(self, name: str, redis: aioredis.Redis) -> Program:
        """The program as it stands now; `UnknownProgram` for a name never registered."""
        entry = self.programs.get(name)
        if entry is None:
            raise UnknownProgram(name, sorted(self.programs))
        return (await self._now([entry], redis))[0]

    async def all(self, redis: aioredis.Redis) -> list[Program]:
        return await self._now(list(self.programs.values()), redis)

    async def _now(self, entries: list[CatalogEntry], redis: aioredis.Redis) -> list[Program]:
        served = await self._served(redis)
        found = []
        for entry in entries:
            workers = [(worker.name, worker.serves.get(entry.name)) for worker in served]
            loaded_by: dict[str, list[str]] = {}
            for worker in served:
                for held in worker.holds.get(entry.name, []):
                    loaded_by.setdefault(held, []).append(worker.name)
            if entry.mlflow_uri is None:
                version, metadata = self._artifact(entry)
                found.append(
                    Program(
                        entry.name, entry.name == self.default, entry.entry, entry.models, entry.problem, version,
                        metadata, workers, loaded_by,
                    )
                )  # fmt: skip
                continue
            problems = [worker.problems.get(entry.name) for worker in served]
            state = await self._mlflow.state(redis, entry.name, workers, [p for p in problems if p])
            found.append(
                Program(
                    entry.name, False, entry.entry, state.models, state.problem, state.version, state.metadata,
                    workers, loaded_by,
                )
            )  # fmt: skip
        return found

    async def _served(self, redis: aioredis.Redis) -> list["_Worker"]:
        """Each online worker: the version of each program it serves, those it holds, why it cannot serve others."""
        since = time.time() - self._offline_after_s
        workers = cast(list[str], await redis.zrangebyscore(keys.WORKERS, since, "+inf"))
        async with redis.pipeline(transaction=False) as pipe:
            for worker in workers:
                pipe.hmget(keys.worker(worker), ["programs", "problems", "versions"])
            listed = cast(list[list[str | None]], await pipe.execute())
        return [
            _Worker(worker, json.loads(serves or "{}"), json.loads(problems or "{}"), json.loads(holds or "{}"))
            for worker, (serves, problems, holds) in zip(workers, listed, strict=True)
        ]

    def _artifact(self, entry: CatalogEntry) -> tuple[str | None, dict[str, Any] | None]:
        """The artifact's version and metadata, read again when the file changed."""
        try:
            mtime = entry.artifact.stat().st_mtime
            cached = self._artifacts.get(entry.artifact)
            if cached is None or cached[0] != mtime:
                info = read_artifact_info(entry.name, entry.artifact)
                cached = self._artifacts[entry.artifact] = (mtime, info.version, info.metadata)
        except (OSError, ArtifactError):
            return None, None
        return cached[1], cached[2]


def _default_bodies(models: ProgramModels) -> DefaultBodies:
    clash = OVERRIDE_NAMES & set(models.input_fields)
    if clash:
        raise ArtifactError(
            f"the default program has input field(s) {sorted(clash)}, which `/jobs` uses for job options; "
            "rename them, or make another program the default"
        )
    job_create = create_model(
        "JobCreate",
        __base__=(models.input, JobOptions),
        __doc__="The default program's input fields, with optional LM overrides for this job only.",
    )
    item = create_model("BatchItem", __base__=(models.input, CustomId))
    batch_create = create_model(
        "BatchCreate",
        __base__=BatchOptions,
        __doc__="Many inputs of the default program at once; `model` and `temperature` apply to every item.",
        items=(list[item], Field(min_length=1, description="The items, each the input of one job.")),
    )
    return DefaultBodies(job_create, batch_create)
