"""Re-optimization as a job: build a candidate version from feedback, score it, register it (api/optimizations.py)."""

from typing import Any

from fastapi import APIRouter, Request, status

from api import optimizations
from api.auth import UNAUTHORIZED, AdminDep
from api.deps import RedisDep, SettingsDep
from api.optimizations import Optimization, OptimizationCreate
from api.program_catalog import Catalog
from api.submission import BATCH_RESPONSES, SubmissionDep

router = APIRouter(tags=["versions"], responses=UNAUTHORIZED)

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such program or optimization."},
    403: {"description": "Not an operator's key (API_ADMIN_KEYS)."},
}
_CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **BATCH_RESPONSES,
    **_NOT_FOUND,
    422: {"description": "Fewer than two usable examples (the message says how many it found), or a bad body."},
}


@router.post(
    "/programs/{name}/optimizations",
    response_model=Optimization,
    status_code=status.HTTP_202_ACCEPTED,
    responses=_CREATE_RESPONSES,
)
async def create_optimization(
    name: str, body: OptimizationCreate, request: Request, submission: SubmissionDep, _admin: AdminDep
) -> Optimization:
    """Build a candidate version from past jobs feedback vouched for, in the bulk lane: hold out part of the
    examples, build from the rest, score candidate and current on the held-out part, register the candidate
    (serving nobody). Follow `links.events`; cancel at `links.cancel`."""
    catalog: Catalog = request.app.state.catalog
    return await optimizations.create(submission, catalog, name, body)


@router.get("/programs/{name}/optimizations/{optimization_id}", response_model=Optimization, responses=_NOT_FOUND)
async def get_optimization(name: str, optimization_id: str, redis: RedisDep, admin: AdminDep) -> Optimization:
    """The optimization: its status, and once it succeeded what it used and the two held-out scores."""
    return await optimizations.read(redis, admin, name, optimization_id)


@router.post(
    "/programs/{name}/optimizations/{optimization_id}/cancel",
    response_model=Optimization,
    responses={**_NOT_FOUND, 409: {"description": "It already ended."}},
)
async def cancel_optimization(
    name: str, optimization_id: str, redis: RedisDep, settings: SettingsDep, admin: AdminDep
) -> Optimization:
    """Stop it: a queued one never runs, a running one stops at its next LM call and registers nothing."""
    return await optimizations.cancel(redis, settings, admin, name, optimization_id)
