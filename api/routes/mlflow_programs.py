"""`POST /programs/{name}/jobs` and `/batches` for a program served from MLflow.

Its body models are not known when the app is built (the workers publish
them once they have loaded the model: api/mlflow_programs.py), so these
routes take any JSON object and validate it themselves against the models
of the version served now: the same 422 naming the field as every other
route, or 503 with the workers' reason while no worker serves the program.
Then the job or batch is submitted exactly as for any other program.
"""

from collections.abc import Callable
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Body, HTTPException, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from api.auth import CallerDep
from api.deps import CeleryDep, RedisDep, SettingsDep, WaitsDep
from api.idempotency import IdempotencyKey
from api.mlflow_programs import MlflowPrograms
from api.program_catalog import ProgramModels
from api.routes import batches, jobs
from core.batches import Batch
from core.jobs import Job
from core.settings import Settings

AnyBody = Annotated[dict[str, Any], Body(description="As `GET /programs/{name}` describes: `input`, and options.")]

_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "No worker serves the program now (the reason says why), or Redis is unavailable."},
    422: {"description": "The body does not fit the program's fields, as `GET /programs/{name}` has them."},
}


async def _models(programs: MlflowPrograms, redis: aioredis.Redis, settings: Settings, name: str) -> ProgramModels:
    state = await programs.state(redis, settings, name)
    if state.models is None:
        raise HTTPException(503, f"program {name!r} cannot be served: {state.problem}")
    return state.models


def _validated(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        # As FastAPI reports its own body errors, so the 422 reads the same (`input.note: ...`).
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in e.errors(include_url=False)]
        ) from None


def add_routes(
    router: APIRouter,
    name: str,
    programs: MlflowPrograms,
    inputs_of: Callable[[Any], dict[str, Any]],
    items_of: Callable[[Any], list[dict[str, Any]]],
) -> None:
    async def submit_job(
        body: AnyBody,
        response: Response,
        redis: RedisDep,
        celery: CeleryDep,
        waits: WaitsDep,
        settings: SettingsDep,
        caller: CallerDep,
        idempotency_key: IdempotencyKey = None,
        wait: jobs.WaitQuery = None,
    ) -> Job | Response:
        parsed = _validated((await _models(programs, redis, settings, name)).job_create, body)
        return await jobs.submit(
            name, inputs_of(parsed), parsed, response, redis, celery, waits, settings, caller, idempotency_key, wait
        )

    async def submit_batch(
        body: AnyBody,
        response: Response,
        redis: RedisDep,
        settings: SettingsDep,
        caller: CallerDep,
        idempotency_key: IdempotencyKey = None,
    ) -> Batch:
        parsed = _validated((await _models(programs, redis, settings, name)).batch_create, body)
        return await batches.submit(name, items_of(parsed), parsed, response, redis, settings, caller, idempotency_key)

    submit_job.__doc__ = (
        f"Submit a `{name}` job (served from MLflow; its input under `input`, fields as `GET /programs/{name}` "
        "says); 202 at once, or the finished job within `wait` seconds."
    )
    submit_batch.__doc__ = f"Submit a batch of `{name}` jobs (served from MLflow); 202 once every item is stored."
    router.add_api_route(
        f"/programs/{name}/jobs",
        submit_job,
        methods=["POST"],
        status_code=status.HTTP_202_ACCEPTED,
        response_model=Job,
        summary=f"Submit a {name} job",
        responses={**jobs.SUBMIT_RESPONSES, **_UNAVAILABLE},
    )
    router.add_api_route(
        f"/programs/{name}/batches",
        submit_batch,
        methods=["POST"],
        status_code=status.HTTP_202_ACCEPTED,
        response_model=Batch,
        summary=f"Submit a {name} batch",
        responses={**batches.SUBMIT_RESPONSES, **_UNAVAILABLE},
    )
