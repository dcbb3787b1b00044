"""`/programs`: every registered program, its schemas and versions; submit jobs and batches to any of them.

`POST /programs/{name}/jobs` and `/batches` are one concrete route per
program, each with the program's own body model, so `/openapi.json`
documents every program's input and output fields. A catch-all behind them
answers for names that have no such route: 404 for a name never registered,
503 with the reason for a registered program that cannot be served.
A program served from MLflow has routes of its own that validate against
what the workers publish (api/routes/mlflow_programs.py).
"""

import json
import time
from typing import Any, cast

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from api.auth import UNAUTHORIZED, CallerDep
from api.deps import RedisDep, SettingsDep
from api.mlflow_programs import MlflowPrograms
from api.program_catalog import Catalog, CatalogEntry, ProgramModels
from api.routes import batches, jobs, mlflow_programs
from core import keys
from core.programs import ArtifactError, read_artifact_info


class WorkerVersion(BaseModel):
    worker: str = Field(description="The worker (Celery hostname).")
    version: str | None = Field(description="The artifact version it serves now; null if it has not loaded it.")


class ProgramLinks(BaseModel):
    jobs: str
    batches: str


class ProgramInfo(BaseModel):
    name: str
    default: bool = Field(description="Whether `/jobs` and `/batches` run this program.")
    available: bool = Field(description="Whether submissions are accepted (its artifact was readable at startup).")
    problem: str | None = Field(None, description="Why it cannot be served, when it cannot.")
    module: str | None = Field(description="Import path of the program's module (for MLflow programs, if set).")
    version: str | None = Field(
        description="Version of the artifact on disk now; for a program from MLflow, the newest version an online "
        "worker serves (`models:/<name>/<version>`)."
    )
    artifact: dict[str, Any] | None = Field(
        description="The artifact's metadata: when and how it was built, its dev score, the dspy version, ..."
    )
    input_schema: dict[str, Any] | None = Field(description="JSON Schema of the input this API accepts.")
    output_schema: dict[str, Any] | None = Field(description="JSON Schema of the result.")
    workers: list[WorkerVersion] = Field(description="Online workers and the version each serves.")
    mlflow: dict[str, Any] | None = Field(
        None,
        description="For a program served from MLflow: its URI, and what the workers know of the version "
        "served (registered model, version, run, source); `version` is then that version's URI.",
    )
    links: ProgramLinks


def _inputs(body: Any) -> dict[str, Any]:
    inputs: dict[str, Any] = body.input.model_dump(mode="json", exclude_unset=True)
    return inputs


def _items(body: Any) -> list[dict[str, Any]]:
    return [
        {
            **item.input.model_dump(mode="json", exclude_unset=True),
            **({"custom_id": item.custom_id} if item.custom_id is not None else {}),
        }
        for item in body.items
    ]


def _add_program_routes(router: APIRouter, name: str, models: ProgramModels) -> None:
    jobs.add_submit_route(
        router,
        f"/programs/{name}/jobs",
        name,
        models.job_create,
        models.job,
        _inputs,
        f"Submit a `{name}` job (its input under `input`); 202 at once, or the finished job within `wait` seconds.",
    )
    batches.add_submit_route(
        router,
        f"/programs/{name}/batches",
        name,
        models.batch_create,
        _items,
        f"Submit a batch of `{name}` jobs; 202 once every item is stored, before they are all enqueued.",
    )


async def _worker_versions(redis: RedisDep, offline_after_s: float) -> list[tuple[str, dict[str, str]]]:
    since = time.time() - offline_after_s
    workers = cast(list[str], await redis.zrangebyscore(keys.WORKERS, since, "+inf"))
    async with redis.pipeline(transaction=False) as pipe:
        for worker in workers:
            pipe.hget(keys.worker(worker), "programs")
        listed = cast(list[str | None], await pipe.execute())
    return [(worker, json.loads(raw) if raw else {}) for worker, raw in zip(workers, listed, strict=True)]


def _info(entry: CatalogEntry, default: bool, workers: list[tuple[str, dict[str, str]]]) -> ProgramInfo:
    try:
        artifact = read_artifact_info(entry.name, entry.artifact)
        version, metadata = artifact.version, artifact.metadata
    except ArtifactError:
        version, metadata = None, None
    models = entry.models
    return ProgramInfo(
        name=entry.name,
        default=default,
        available=models is not None,
        problem=entry.problem,
        module=entry.entry.module,
        version=version,
        artifact=metadata,
        input_schema=models.input.model_json_schema() if models else None,
        output_schema=models.output.model_json_schema() if models else None,
        workers=[WorkerVersion(worker=worker, version=loaded.get(entry.name)) for worker, loaded in workers],
        links=ProgramLinks(jobs=f"/programs/{entry.name}/jobs", batches=f"/programs/{entry.name}/batches"),
    )


async def _mlflow_info(
    programs: MlflowPrograms, redis: RedisDep, settings: SettingsDep, entry: CatalogEntry
) -> ProgramInfo:
    state = await programs.state(redis, settings, entry.name)
    models = state.models
    return ProgramInfo(
        name=entry.name,
        default=False,
        available=state.available,
        problem=state.problem,
        module=entry.entry.module,
        version=state.version,
        artifact=None,
        input_schema=models.input.model_json_schema() if models else None,
        output_schema=models.output.model_json_schema() if models else None,
        workers=[WorkerVersion(worker=worker, version=version) for worker, version in state.workers],
        mlflow={"uri": entry.mlflow_uri, **(state.metadata or {})},
        links=ProgramLinks(jobs=f"/programs/{entry.name}/jobs", batches=f"/programs/{entry.name}/batches"),
    )


def build_router(catalog: Catalog) -> APIRouter:
    router = APIRouter(tags=["programs"], responses=UNAUTHORIZED)
    from_mlflow = MlflowPrograms()

    async def info(
        entry: CatalogEntry, redis: RedisDep, settings: SettingsDep, workers: list[tuple[str, dict[str, str]]]
    ) -> ProgramInfo:
        if entry.mlflow_uri is not None:
            return await _mlflow_info(from_mlflow, redis, settings, entry)
        return _info(entry, entry.name == catalog.default, workers)

    @router.get("/programs", response_model=list[ProgramInfo])
    async def list_programs(redis: RedisDep, settings: SettingsDep, _caller: CallerDep) -> list[ProgramInfo]:
        """Every registered program: its schemas, the artifact version on disk, and the version each online
        worker serves."""
        workers = await _worker_versions(redis, settings.worker_offline_after_s)
        return [await info(entry, redis, settings, workers) for entry in catalog.programs.values()]

    @router.get(
        "/programs/{name}", response_model=ProgramInfo, responses={404: {"description": "No program with this name."}}
    )
    async def get_program(name: str, redis: RedisDep, settings: SettingsDep, _caller: CallerDep) -> ProgramInfo:
        """One program: its schemas, the artifact version on disk, and the version each online worker serves."""
        entry = _entry(catalog, name)
        workers = await _worker_versions(redis, settings.worker_offline_after_s)
        return await info(entry, redis, settings, workers)

    for name, entry in catalog.programs.items():
        if entry.models is not None:
            _add_program_routes(router, name, entry.models)
        elif entry.mlflow_uri is not None:
            mlflow_programs.add_routes(router, name, from_mlflow, _inputs, _items)

    # Behind the concrete routes: only names without one reach these.
    @router.post("/programs/{name}/jobs", include_in_schema=False)
    @router.post("/programs/{name}/batches", include_in_schema=False)
    async def unservable(name: str, _caller: CallerDep) -> None:
        entry = _entry(catalog, name)
        raise HTTPException(503, f"program {name!r} cannot be served: {entry.problem}")

    return router


def _entry(catalog: Catalog, name: str) -> CatalogEntry:
    entry = catalog.programs.get(name)
    if entry is None:
        raise HTTPException(404, f"no program named {name!r}; known: {sorted(catalog.programs)}")
    return entry
