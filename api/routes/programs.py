"""`/programs`: every registered program, its schemas and versions; submit jobs and batches to any of them.

Every program is looked up in the catalog (api/program_catalog.py), whatever
its source. `POST /programs/{name}/jobs` and `/batches`:

- for a program from an artifact, one concrete route per program, each with
  the program's own body model, so `/openapi.json` documents every program's
  input and output fields;
- for a program from MLflow, whose fields are known only once a worker has
  loaded it, a route that takes any JSON object and validates it against
  the models of the version served now: the same 422 naming the field as
  every other route, or 503 with the workers' reason while none serves it;
- behind those, for names with no route: 404 for a name never registered,
  503 with the reason for a registered program that cannot be served.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from api.auth import UNAUTHORIZED, CallerDep
from api.deps import RedisDep
from api.program_catalog import Catalog, Program, UnknownProgram
from api.program_models import ProgramModels
from api.submission import (
    BATCH_RESPONSES,
    JOB_RESPONSES,
    SubmissionDep,
    WaitQuery,
    add_batch_route,
    add_job_route,
)
from core import rollouts
from core.batches import Batch
from core.jobs import Job


class WorkerVersion(BaseModel):
    worker: str = Field(description="The worker (Celery hostname).")
    version: str | None = Field(description="The version it serves now; null if it has not loaded it.")


class ProgramLinks(BaseModel):
    jobs: str
    batches: str


class RolloutSummary(BaseModel):
    stable: str | None = Field(description="The version serving jobs outside a canary; null: `version` above.")
    candidate: str | None = Field(description="The version on trial, if any.")
    percent: float = Field(description="The candidate's share of jobs, in percent.")


class ProgramInfo(BaseModel):
    name: str
    default: bool = Field(description="Whether `/jobs` and `/batches` run this program.")
    available: bool = Field(description="Whether submissions are accepted now.")
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
    rollout: RolloutSummary = Field(description="Which versions serve its jobs now (`GET .../rollout` has more).")
    links: ProgramLinks


AnyBody = Annotated[dict[str, Any], Body(description="As `GET /programs/{name}` describes: `input`, and options.")]
_LATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"description": "No worker serves the program now (the reason says why), or Redis is unavailable."},
    422: {"description": "The body does not fit the program's fields, as `GET /programs/{name}` has them."},
}


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


def _info(program: Program, rollout: rollouts.Rollout) -> ProgramInfo:
    models = program.models
    from_mlflow = program.mlflow_uri is not None
    return ProgramInfo(
        name=program.name,
        default=program.default,
        available=program.available,
        problem=program.problem,
        module=program.entry.module,
        version=program.version,
        artifact=None if from_mlflow else program.metadata,
        input_schema=models.input.model_json_schema() if models else None,
        output_schema=models.output.model_json_schema() if models else None,
        workers=[WorkerVersion(worker=worker, version=version) for worker, version in program.workers],
        mlflow={"uri": program.mlflow_uri, **(program.metadata or {})} if from_mlflow else None,
        rollout=RolloutSummary(stable=rollout.stable, candidate=rollout.candidate, percent=rollout.percent),
        links=ProgramLinks(jobs=f"/programs/{program.name}/jobs", batches=f"/programs/{program.name}/batches"),
    )


def _validated(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        # As FastAPI reports its own body errors, so the 422 reads the same (`input.note: ...`).
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in e.errors(include_url=False)]
        ) from None


def _typed_routes(router: APIRouter, name: str, models: ProgramModels) -> None:
    add_job_route(
        router,
        f"/programs/{name}/jobs",
        name,
        models.job_create,
        models.job,
        _inputs,
        f"Submit a `{name}` job (its input under `input`); 202 at once, or the finished job within `wait` seconds.",
    )
    add_batch_route(
        router,
        f"/programs/{name}/batches",
        name,
        models.batch_create,
        _items,
        f"Submit a batch of `{name}` jobs; 202 once every item is stored, before they are all enqueued.",
    )


def _late_routes(router: APIRouter, name: str, served: Callable[[str, Any], Awaitable[ProgramModels]]) -> None:
    """The submit routes of a program whose fields the API learns from the workers (MLflow)."""

    async def submit_job(
        body: AnyBody, submission: SubmissionDep, redis: RedisDep, wait: WaitQuery = None
    ) -> Job | Response:
        parsed = _validated((await served(name, redis)).job_create, body)
        return await submission.job(name, _inputs(parsed), parsed, wait)

    async def submit_batch(body: AnyBody, submission: SubmissionDep, redis: RedisDep) -> Batch:
        parsed = _validated((await served(name, redis)).batch_create, body)
        return await submission.batch(name, _items(parsed), parsed)

    submit_job.__doc__ = (
        f"Submit a `{name}` job (served from MLflow; its input under `input`, fields as `GET /programs/{name}` "
        "says); 202 at once, or the finished job within `wait` seconds."
    )
    submit_batch.__doc__ = f"Submit a batch of `{name}` jobs (served from MLflow); 202 once every item is stored."
    for path, endpoint, model, responses in (
        (f"/programs/{name}/jobs", submit_job, Job, JOB_RESPONSES),
        (f"/programs/{name}/batches", submit_batch, Batch, BATCH_RESPONSES),
    ):
        router.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            status_code=202,
            response_model=model,
            summary=f"Submit a {name} {'job' if model is Job else 'batch'}",
            responses={**responses, **_LATE_RESPONSES},
        )


def build_router(catalog: Catalog) -> APIRouter:
    router = APIRouter(tags=["programs"], responses=UNAUTHORIZED)

    async def served(name: str, redis: RedisDep) -> ProgramModels:
        """The models of the version served now, or 404 / 503 saying why there are none."""
        try:
            program = await catalog.program(name, redis)
        except UnknownProgram as e:
            raise HTTPException(404, str(e)) from e
        if program.models is None:
            raise HTTPException(503, f"program {name!r} cannot be served: {program.problem}")
        return program.models

    @router.get("/programs", response_model=list[ProgramInfo])
    async def list_programs(redis: RedisDep, _caller: CallerDep) -> list[ProgramInfo]:
        """Every registered program: its schemas, the artifact version on disk, and the version each online
        worker serves."""
        return [_info(program, (await rollouts.read(redis, program.name))[0]) for program in await catalog.all(redis)]

    @router.get(
        "/programs/{name}", response_model=ProgramInfo, responses={404: {"description": "No program with this name."}}
    )
    async def get_program(name: str, redis: RedisDep, _caller: CallerDep) -> ProgramInfo:
        """One program: its schemas, the artifact version on disk, and the version each online worker serves."""
        try:
            program = await catalog.program(name, redis)
        except UnknownProgram as e:
            raise HTTPException(404, str(e)) from e
        return _info(program, (await rollouts.read(redis, program.name))[0])

    for name, models in catalog.typed().items():
        _typed_routes(router, name, models)
    for name in catalog.learned_from_workers():
        _late_routes(router, name, served)

    # Behind the concrete routes: only names without one reach these.
    @router.post("/programs/{name}/jobs", include_in_schema=False)
    @router.post("/programs/{name}/batches", include_in_schema=False)
    async def unservable(name: str, redis: RedisDep, _caller: CallerDep) -> None:
        await served(name, redis)

    return router
