"""Replays: past jobs' inputs run again against another version or model, compared (api/replays.py)."""

from typing import Any

from fastapi import APIRouter, Request, status

from api import replays
from api.auth import UNAUTHORIZED, AdminDep
from api.deps import RedisDep
from api.program_catalog import Catalog
from api.replays import Replay, ReplayCreate
from api.submission import BATCH_RESPONSES, SubmissionDep

router = APIRouter(tags=["versions"], responses=UNAUTHORIZED)

_RESPONSES: dict[int | str, dict[str, Any]] = {
    **BATCH_RESPONSES,
    403: {"description": "Not an operator's key (API_ADMIN_KEYS)."},
    404: {"description": "No program with this name, or no such batch in the filter."},
    422: {"description": "No succeeded job matches the filter, or a version no worker holds, or a bad filter."},
}


@router.post(
    "/programs/{name}/replays", response_model=Replay, status_code=status.HTTP_202_ACCEPTED, responses=_RESPONSES
)
async def create_replay(
    name: str, body: ReplayCreate, request: Request, submission: SubmissionDep, _admin: AdminDep
) -> Replay:
    """Run the inputs of past jobs (chosen by filter) again, as one batch, against `version` and/or `model`;
    read the comparison at the answer's `Location`."""
    catalog: Catalog = request.app.state.catalog
    return await replays.create(submission, catalog, name, body)


@router.get(
    "/programs/{name}/replays/{replay_id}",
    response_model=Replay,
    responses={404: {"description": "No such replay."}, 403: _RESPONSES[403]},
)
async def get_replay(name: str, replay_id: str, redis: RedisDep, admin: AdminDep) -> Replay:
    """The replay compared input by input: same or different output per field, agreement with corrections,
    the program's metric of both answers; and in sum."""
    return await replays.read(redis, admin, name, replay_id)
