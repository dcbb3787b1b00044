"""`/jobs`: submit a job of the default program, poll it, cancel it.

`POST /jobs` takes the default program's input fields at the top level of
the body; it and `POST /programs/{name}/jobs` submit through the same
service (api/submission.py).
"""

import logging
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response

from api import batch_store, job_store, listing
from api.auth import UNAUTHORIZED, CallerDep
from api.deps import RedisDep, SettingsDep, WaitsDep
from api.program_catalog import Catalog
from api.submission import WaitQuery, add_job_route
from core.jobs import Job, JobLinks, JobStatus, job_from_fields
from core.logging_setup import bind

log = logging.getLogger(__name__)


def build_router(catalog: Catalog) -> APIRouter:
    router = APIRouter(tags=["jobs"], responses=UNAUTHORIZED)
    default = catalog.default_models
    fields = set(default.input_fields)
    add_job_route(
        router,
        "/jobs",
        catalog.default,
        catalog.default_bodies.job_create,  # type: ignore[arg-type]
        default.job,
        lambda body: body.model_dump(mode="json", include=fields, exclude_unset=True),
        f"Submit a `{catalog.default}` job (the default program); answers 202 at once, or the finished job if it "
        "completes within `wait` seconds.",
    )
    router.include_router(_reads)
    return router


# The routes that read and cancel jobs, the same whatever the catalog holds.
_reads = APIRouter(prefix="/jobs")
_CANCEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "No job with this id."},
    409: {"description": "The job already finished; it is left as it was."},
}


@_reads.get(
    "",
    response_model=listing.ListPage[Job],
    responses={400: {"description": "A cursor this API did not give."}, 404: {"description": "No such batch."}},
)
async def list_jobs(
    redis: RedisDep,
    caller: CallerDep,
    status: JobStatus | None = None,
    program: str | None = None,
    version: Annotated[str | None, Query(description="The program version that served it (needs `program`).")] = None,
    error: Annotated[str | None, Query(description="The failure's type, e.g. LMTimeoutError, DeadLettered.")] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    feedback: Annotated[
        Literal["any", "corrected", "positive"] | None,
        Query(
            description="Jobs with feedback: any, one with a correction, a latest score of at least 0.5 "
            "(needs `program`)."
        ),
    ] = None,
    batch_id: Annotated[str | None, Query(description="A batch's items, in the batch's order (`status` only).")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> listing.ListPage[Job]:
    """Jobs newest first (a batch's items in its order), filtered; this key's own, an operator's key every
    key's. Follow `next_cursor` for the next page."""
    if batch_id is not None:
        if program or version or error or created_after or created_before or feedback:
            raise HTTPException(422, "with batch_id, only status filters: the items share their batch's program")
        batch = await batch_store.read_batch(redis, batch_id, caller)
        page = await listing.item_page(redis, batch, [status] if status else list(JobStatus), cursor, limit)
    else:
        filters = listing.Filters(
            status and status.value, program, version, error, created_after, created_before, feedback
        )
        page = await listing.page(redis, caller, "jobs", filters, cursor, limit)
    return listing.ListPage[Job](
        data=await listing.jobs(redis, page.ids), next_cursor=page.next_cursor, total=page.total
    )


@_reads.get("/{job_id}", response_model=Job, responses={404: {"description": "No job with this id."}})
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


@_reads.post("/{job_id}/cancel", response_model=Job, responses=_CANCEL_RESPONSES)
async def cancel_job(job_id: str, redis: RedisDep, settings: SettingsDep, caller: CallerDep) -> Job:
    """Cancel a job: a queued one never runs, a running one stops at once; a finished one is a 409."""
    bind(job_id=job_id)
    fields = await job_store.cancel_job(redis, settings, job_id, caller)
    log.info("job cancelled by key %s", caller.name)
    return job_from_fields(fields, JobLinks.for_job(job_id))


@_reads.delete("/{job_id}", response_model=Job, responses=_CANCEL_RESPONSES)
async def delete_job(job_id: str, redis: RedisDep, settings: SettingsDep, caller: CallerDep) -> Job:
    """Same as `POST /jobs/{id}/cancel`; the record stays readable until it expires."""
    return await cancel_job(job_id, redis, settings, caller)
