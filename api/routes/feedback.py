"""Feedback on jobs, and its summary per program version (api/feedback.py)."""

from fastapi import APIRouter, HTTPException, Request, status

from api import feedback
from api.auth import UNAUTHORIZED, CallerDep
from api.deps import RedisDep, SettingsDep
from api.feedback import FeedbackCreate, FeedbackSummary, JobFeedback
from api.program_catalog import Catalog, UnknownProgram
from core.logging_setup import bind

router = APIRouter(tags=["feedback"], responses=UNAUTHORIZED)


@router.post(
    "/jobs/{job_id}/feedback",
    response_model=JobFeedback,
    status_code=status.HTTP_201_CREATED,
    responses={
        404: {"description": "No job with this id that this key may see."},
        409: {"description": "The job has not ended, or holds FEEDBACK_MAX_PER_JOB entries already."},
        422: {
            "description": "A score out of range, or a correction naming a field the program does not have, or "
            "with a value of the wrong type (the message names it)."
        },
    },
)
async def give_feedback(
    job_id: str, body: FeedbackCreate, request: Request, redis: RedisDep, settings: SettingsDep, caller: CallerDep
) -> JobFeedback:
    """Judge a finished job: a score (0 to 1, or good / bad), a comment, a correction of its output fields.
    Answers every entry the job holds."""
    bind(job_id=job_id)
    catalog: Catalog = request.app.state.catalog
    return await feedback.add(redis, settings, catalog, job_id, caller, body)


@router.get("/jobs/{job_id}/feedback", response_model=JobFeedback, responses={404: {"description": "No such job."}})
async def job_feedback(job_id: str, redis: RedisDep, caller: CallerDep) -> JobFeedback:
    """Every feedback entry of a job, oldest first."""
    return await feedback.read(redis, job_id, caller)


@router.get(
    "/programs/{name}/feedback",
    response_model=FeedbackSummary,
    responses={404: {"description": "No program with this name."}},
)
async def program_feedback(name: str, request: Request, redis: RedisDep, _caller: CallerDep) -> FeedbackSummary:
    """Feedback on a program's jobs per version that served them: entries, mean score, share with corrections."""
    catalog: Catalog = request.app.state.catalog
    try:
        await catalog.program(name, redis)
    except UnknownProgram as e:
        raise HTTPException(404, str(e)) from e
    return await feedback.summary(redis, name)
