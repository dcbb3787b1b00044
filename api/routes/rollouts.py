"""A program's versions side by side, and its rollout: canary, promote, roll back (api/rollouts.py)."""

from typing import Any

from fastapi import APIRouter, HTTPException, Request

from api import rollouts
from api.auth import UNAUTHORIZED, AdminDep, CallerDep
from api.deps import RedisDep, SettingsDep
from api.program_catalog import Catalog, Program, UnknownProgram
from api.program_versions import ProgramVersions, side_by_side
from api.rollouts import RolloutUpdate
from core import rollouts as rules
from core.rollouts import Rollout

router = APIRouter(tags=["versions"], responses=UNAUTHORIZED)

_NO_PROGRAM: dict[int | str, dict[str, Any]] = {404: {"description": "No program with this name."}}
_ADMIN: dict[int | str, dict[str, Any]] = {403: {"description": "Not an operator's key (API_ADMIN_KEYS)."}}


async def _program(request: Request, redis: RedisDep, name: str) -> Program:
    catalog: Catalog = request.app.state.catalog
    try:
        return await catalog.program(name, redis)
    except UnknownProgram as e:
        raise HTTPException(404, str(e)) from e


@router.get("/programs/{name}/versions", response_model=ProgramVersions, responses=_NO_PROGRAM)
async def versions(name: str, request: Request, redis: RedisDep, _caller: CallerDep) -> ProgramVersions:
    """Every version of the program side by side: its source, role and share, the workers holding it, and its
    jobs, failure and parse-failure rates, latency, tokens and feedback."""
    return await side_by_side(redis, await _program(request, redis, name))


@router.get("/programs/{name}/rollout", response_model=Rollout, responses=_NO_PROGRAM)
async def rollout(name: str, request: Request, redis: RedisDep, _caller: CallerDep) -> Rollout:
    """The program's rollout: its stable and candidate versions, the candidate's share, its history."""
    program = await _program(request, redis, name)
    return (await rules.read(redis, program.name))[0]


@router.put(
    "/programs/{name}/rollout",
    response_model=Rollout,
    responses={
        **_NO_PROGRAM,
        **_ADMIN,
        409: {"description": "The version is already the stable one."},
        422: {"description": "A percent outside 0-100, or a version no online worker has loaded."},
    },
)
async def start_canary(name: str, body: RolloutUpdate, request: Request, redis: RedisDep, admin: AdminDep) -> Rollout:
    """Serve `version` to `percent` of the program's jobs (by a stable hash of each job's id, or of its
    `rollout_key`); again with another percent re-weights the canary."""
    return await rollouts.canary(redis, await _program(request, redis, name), body, admin.name)


@router.post(
    "/programs/{name}/rollout/promote",
    response_model=Rollout,
    responses={
        **_NO_PROGRAM,
        **_ADMIN,
        409: {"description": "No candidate to promote."},
        502: {"description": "MLflow would not move the program's alias."},
    },
)
async def promote(name: str, request: Request, redis: RedisDep, settings: SettingsDep, admin: AdminDep) -> Rollout:
    """The candidate serves every job from now (a program served by an MLflow alias: the alias moves to it);
    the version it replaces is kept for a roll back."""
    return await rollouts.promote(redis, settings, await _program(request, redis, name), admin.name)


@router.post(
    "/programs/{name}/rollout/rollback",
    response_model=Rollout,
    responses={**_NO_PROGRAM, **_ADMIN, 409: {"description": "No candidate and no promotion to roll back."}},
)
async def rollback(name: str, request: Request, redis: RedisDep, settings: SettingsDep, admin: AdminDep) -> Rollout:
    """Drop the candidate; with none, undo the last promotion (moving an MLflow alias back)."""
    return await rollouts.rollback(redis, settings, await _program(request, redis, name), admin.name)
