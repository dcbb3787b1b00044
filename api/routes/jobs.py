"""`/jobs`: submit a job, poll it, cancel it.

Submitting is shared by `POST /jobs` (the default program, its input fields
at the top level of the body) and `POST /programs/{name}/jobs` (any program,
its input under `input`); both routes are added by `add_submit_route` once
the program catalog is known (api/main.py).
"""

import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Annotated, Any

import redis.asyncio as aioredis
from celery import Celery
from fastapi import APIRouter, HTTPException, Query, Response, status
from redis.exceptions import RedisError

from api import idempotency, job_store
from api.auth import UNAUTHORIZED, Caller, CallerDep
from api.deps import CeleryDep, RedisDep, SettingsDep, WaitsDep
from api.enqueue import task_messages
from api.idempotency import IdempotencyKey
from api.metrics import JOBS_SUBMITTED
from api.schemas import JobOptions
from api.submission_rate import check_submission
from api.waits import Waits
from api.webhook_url import check_webhook_url
from core.jobs import Job, JobLinks, JobStatus, job_from_fields, now_s
from core.logging_setup import bind
from core.queue import RUN_JOB_TASK
from core.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"], responses=UNAUTHORIZED)


WaitQuery = Annotated[
    float | None,
    Query(ge=0, description="Seconds to wait for the result before answering (bounded by the server)."),
]

SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Finished within `wait` seconds: the final record."},
    429: {"description": "Over this key's submission rate; `Retry-After` says when to retry. Nothing stored."},
    503: {"description": "Redis or the queue is unavailable; nothing was stored."},
}


def add_submit_route(
    router: APIRouter,
    path: str,
    program: str,
    body_model: type[JobOptions],
    job_model: type[Job],
    inputs_of: Callable[[Any], dict[str, Any]],
    doc: str,
) -> None:
    """`POST <path>`: submit one job of `program`, its input taken from a `body_model` body."""

    async def submit_job(
        body: body_model,  # type: ignore[valid-type]
        response: Response,
        redis: RedisDep,
        celery: CeleryDep,
        waits: WaitsDep,
        settings: SettingsDep,
        caller: CallerDep,
        idempotency_key: IdempotencyKey = None,
        wait: WaitQuery = None,
    ) -> Job | Response:
        options: JobOptions = body
        return await submit(
            program, inputs_of(body), options, response, redis, celery, waits, settings, caller, idempotency_key, wait
        )

    submit_job.__doc__ = doc
    router.add_api_route(
        path,
        submit_job,
        methods=["POST"],
        status_code=status.HTTP_202_ACCEPTED,
        response_model=job_model,
        summary=f"Submit a {program} job",
        responses={**SUBMIT_RESPONSES, 200: {"model": job_model, **SUBMIT_RESPONSES[200]}},
    )


async def submit(
    program: str,
    inputs: dict[str, Any],
    options: JobOptions,
    response: Response,
    redis: aioredis.Redis,
    celery: Celery,
    waits: Waits,
    settings: Settings,
    caller: Caller,
    idempotency_key: str | None,
    wait: float | None,
) -> Job | Response:
    """Store the job, enqueue it, answer with the record (or the finished job, given `wait`)."""
    if wait is not None and wait > settings.wait_max_s:
        raise HTTPException(422, f"wait must be at most {settings.wait_max_s} seconds")
    await check_webhook_url(options.webhook_url, settings)
    await check_submission(redis, settings, caller)
    job_id = uuid.uuid4().hex
    body = {"program": program, "input": inputs, **options.model_dump()}
    claim = idempotency.claim_for(caller.scoped(idempotency_key), body, job_id, settings.idempotency_ttl_s)
    bind(job_id=job_id)
    # The model travels with the message: a worker asks for its LM capacity before it reads the record.
    message = task_messages(celery).build(
        RUN_JOB_TASK, job_id, [job_id, options.model or ""], settings.interactive_queue
    )
    created_at = now_s()
    try:
        created = await job_store.create_job(
            redis,
            settings,
            job_id,
            program,
            inputs,
            options.model,
            options.temperature,
            created_at,
            message,
            caller=caller,
            stream=options.stream,
            expires_at_s=created_at + (options.expires_after_s or settings.job_expires_after_s),
            webhook_url=options.webhook_url,
            claim=claim,
        )
    except RedisError:
        # Answered 503 (api/main.py). The script may have run before the
        # error reached us: undo, so no one polls a job its client was told
        # was not accepted.
        with contextlib.suppress(RedisError):
            await job_store.delete_job(redis, job_id)
            await idempotency.release(redis, claim)
        raise
    if isinstance(created, str):
        bind(job_id=created)
        response.headers["Idempotent-Replayed"] = "true"
        return await _respond(response, redis, waits, created, wait, None, caller)
    fields = created
    JOBS_SUBMITTED.labels(program, caller.name).inc()
    log.info("job submitted (program %s, key %s)", program, caller.name)
    # Without `wait`, the answer is the record as accepted (`queued`), even if
    # a worker has already picked the job up: that is what the client polls from.
    return await _respond(response, redis, waits, job_id, wait, fields, caller)


async def _respond(
    response: Response,
    redis: aioredis.Redis,
    waits: Waits,
    job_id: str,
    wait: float | None,
    fields: dict[str, str] | None,
    caller: Caller,
) -> Job | Response:
    response.headers["Location"] = f"/jobs/{job_id}"
    if wait:
        found = await waits.until_finished(caller, job_id, wait)
        if isinstance(found, str):
            # The finished record as its terminal event carries it: already the response body.
            return Response(found, status.HTTP_200_OK, headers=dict(response.headers), media_type="application/json")
        fields = found
    elif fields is None:
        fields = await job_store.read_job(redis, job_id, caller)
    if fields is None:
        raise HTTPException(
            409, "the original request with this Idempotency-Key was not stored (or has expired); retry"
        )
    job = job_from_fields(fields, JobLinks.for_job(job_id))
    if job.status.is_terminal:
        response.status_code = status.HTTP_200_OK
    return job


@router.get(
    "/{job_id}",
    response_model=Job,
    responses={404: {"description": "No job with this id."}},
)
async def get_job(
    job_id: str,
    redis: RedisDep,
    waits: WaitsDep,
    settings: SettingsDep,
    caller: CallerDep,
    wait: WaitQuery = None,
) -> Job | Response:
    """The job record: status, timestamps, attempts, result or error, LM usage; with `wait`, once it has
    ended if it does within that long."""
    bind(job_id=job_id)
    if wait is not None and wait > settings.wait_max_s:
        raise HTTPException(422, f"wait must be at most {settings.wait_max_s} seconds")
    fields = await job_store.read_job(redis, job_id, caller)
    if fields is None:
        raise HTTPException(404, f"no job with id {job_id!r} (never issued, or expired)")
    if wait and not JobStatus(fields["status"]).is_terminal:
        found = await waits.until_finished(caller, job_id, wait)
        if isinstance(found, str):
            return Response(found, media_type="application/json")
        fields = found or fields
    return job_from_fields(fields, JobLinks.for_job(job_id))


_CANCEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "No job with this id."},
    409: {"description": "The job already finished; it is left as it was."},
}


@router.post("/{job_id}/cancel", response_model=Job, responses=_CANCEL_RESPONSES)
async def cancel_job(job_id: str, redis: RedisDep, settings: SettingsDep, caller: CallerDep) -> Job:
    """Cancel a job: a queued one never runs, a running one stops at once; a finished one is a 409."""
    bind(job_id=job_id)
    fields = await job_store.cancel_job(redis, settings, job_id, caller)
    log.info("job cancelled by key %s", caller.name)
    return job_from_fields(fields, JobLinks.for_job(job_id))


@router.delete("/{job_id}", response_model=Job, responses=_CANCEL_RESPONSES)
async def delete_job(job_id: str, redis: RedisDep, settings: SettingsDep, caller: CallerDep) -> Job:
    """Same as `POST /jobs/{id}/cancel`; the record stays readable until it expires."""
    return await cancel_job(job_id, redis, settings, caller)
