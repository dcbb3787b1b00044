"""`/jobs`: submit a job, poll it."""

import asyncio
import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status

from api import job_store
from api.deps import CeleryDep, HubDep, RedisDep, SettingsDep
from api.schemas import JobCreate
from core.jobs import Job, JobLinks, job_from_fields, now_s
from core.queue import RUN_JOB_TASK

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Job,
    responses={
        200: {"model": Job, "description": "Finished within `wait` seconds: the final record."},
        503: {"description": "Redis or the queue is unavailable; nothing was stored."},
    },
)
async def submit_job(
    body: JobCreate,
    response: Response,
    redis: RedisDep,
    celery: CeleryDep,
    hub: HubDep,
    settings: SettingsDep,
    wait: Annotated[
        float | None,
        Query(ge=0, description="Seconds to wait for the result before answering (bounded by the server)."),
    ] = None,
) -> Job:
    """Submit a question; answers 202 at once, or the finished job if it completes within `wait` seconds."""
    if wait is not None and wait > settings.wait_max_s:
        raise HTTPException(422, f"wait must be at most {settings.wait_max_s} seconds")
    job_id = uuid.uuid4().hex
    program = settings.default_program
    fields = await job_store.create_job(
        redis, settings, job_id, program, {"question": body.question}, body.model, body.temperature, now_s()
    )
    try:
        await asyncio.wait_for(
            asyncio.to_thread(celery.send_task, RUN_JOB_TASK, args=[job_id], task_id=job_id),
            settings.enqueue_timeout_s,
        )
    except Exception as e:
        # Not enqueued means not accepted: remove the record so no one polls a
        # job that will never run, and let the client retry.
        await job_store.delete_job(redis, job_id)
        log.error("could not enqueue job %s: %s", job_id, e)
        raise HTTPException(503, "the job queue is unavailable; nothing was stored, retry later") from e
    response.headers["Location"] = f"/jobs/{job_id}"
    if wait:
        finished = await job_store.wait_until_finished(redis, hub, job_id, wait)
        if finished is None:
            raise HTTPException(503, "the job record vanished right after it was stored; is Redis evicting keys?")
        fields = finished
    # Without `wait`, the answer is the record as accepted (`queued`), even if
    # a worker has already picked the job up: that is what the client polls from.
    job = job_from_fields(fields, JobLinks.for_job(job_id))
    if job.status.is_terminal:
        response.status_code = status.HTTP_200_OK
    return job


@router.get("/{job_id}", response_model=Job, responses={404: {"description": "No job with this id."}})
async def get_job(job_id: str, redis: RedisDep) -> Job:
    """The job record: status, timestamps, attempts, result or error, LM usage."""
    fields = await job_store.read_job(redis, job_id)
    if fields is None:
        raise HTTPException(404, f"no job with id {job_id!r} (never issued, or expired)")
    return job_from_fields(fields, JobLinks.for_job(job_id))
