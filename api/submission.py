"""Submitting work: what every route that stores a job or a batch does, in one place.

A route declares its body and its answer and takes one dependency,
`SubmissionDep`, then calls `submission.job(...)` or `submission.batch(...)`.
Each submission, whatever route it came through (`/jobs`, `/programs/{name}/...`,
the OpenAI-compatible routes, what comes next):

1. the caller is known (api/auth.py: the key was checked before the body was
   read; so were the body limit and Redis' high-water mark, in middleware);
2. its `webhook_url`, if any, is one the senders can reach (api/webhook_url.py),
   and the program `version` it is pinned to, if any, one a worker holds;
3. one submission is taken from the key's rate (api/submission_rate.py);
4. the record, its Idempotency-Key claim, the key's quotas and, for a job, its
   task message are written in one Redis step (api/job_store.py,
   api/batch_store.py): stored and enqueued together or not at all; a repeat
   of a claimed key answers with the original (`Idempotent-Replayed: true`);
5. the answer: the record as accepted (`202`), or for a job asked to `wait`,
   the record once it ended within that long (api/waits.py).
"""

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import redis.asyncio as aioredis
from celery import Celery
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from redis.exceptions import RedisError

from api import batch_store, idempotency, job_store
from api.auth import Caller, CallerDep
from api.enqueue import task_messages
from api.idempotency import IdempotencyKey
from api.metrics import BATCHES_SUBMITTED, JOBS_SUBMITTED
from api.program_catalog import Catalog
from api.rollouts import check_loaded
from api.schemas import BatchOptions, JobOptions
from api.submission_rate import check_submission
from api.waits import Waits
from api.webhook_url import check_webhook_url
from core.batches import Batch, batch_from_fields
from core.jobs import Job, JobLinks, job_from_fields, now_s
from core.logging_setup import bind
from core.queue import RUN_JOB_TASK
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)

WaitQuery = Annotated[
    float | None,
    Query(ge=0, description="Seconds to wait for the result before answering (bounded by the server)."),
]

# One batch item as the bulk worker reads it (worker/bulk.py): the input fields, plus `custom_id`.
StoredItem = dict[str, Any]

JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Finished within `wait` seconds: the final record."},
    429: {"description": "Over one of this key's limits or quotas; `Retry-After` says when to retry. Nothing stored."},
    503: {"description": "Redis or the queue is unavailable, or Redis is nearly full; nothing was stored."},
}
BATCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"description": "Too many items, or the body is too large; nothing was stored."},
    429: JOB_RESPONSES[429],
    503: JOB_RESPONSES[503],
}


@dataclass
class Submission:
    """One request's way to store work: who asks, with which Idempotency-Key, answering in `response`."""

    redis: aioredis.Redis
    celery: Celery
    waits: Waits
    settings: Settings
    caller: Caller
    idempotency_key: str | None
    response: Response
    catalog: Catalog

    async def job(
        self, program: str, inputs: dict[str, Any], options: JobOptions, wait: float | None = None
    ) -> Job | Response:
        """Store and enqueue one job of `program`; its record as accepted, or (given `wait`) as it ended."""
        s = self.settings
        if wait is not None and wait > s.wait_max_s:
            raise HTTPException(422, f"wait must be at most {s.wait_max_s} seconds")
        await self._check_version(program, options.version)
        await self._admit(options.webhook_url)
        job_id = uuid.uuid4().hex
        claim = self._claim({"program": program, "input": inputs, **options.model_dump()}, job_id)
        bind(job_id=job_id)
        # The model travels with the message: a worker asks for its LM capacity before it reads the record.
        message = task_messages(self.celery).build(
            RUN_JOB_TASK, job_id, [job_id, options.model or ""], s.interactive_queue
        )
        async with self._undone_unless_stored(lambda: job_store.delete_job(self.redis, job_id), claim):
            created = await job_store.create_job(
                self.redis, s, job_id, program, inputs, options, now_s(), message, self.caller, claim
            )
        if isinstance(created, str):
            bind(job_id=created)
            self.response.headers["Idempotent-Replayed"] = "true"
            return await self._job_answer(created, wait, None)
        JOBS_SUBMITTED.labels(program, self.caller.name).inc()
        log.info("job submitted (program %s, key %s)", program, self.caller.name)
        # Without `wait`, the answer is the record as accepted (`queued`), even if a worker has already
        # picked the job up: that is what the client polls from.
        return await self._job_answer(job_id, wait, created)

    async def batch(self, program: str, items: list[StoredItem], options: BatchOptions) -> Batch:
        """Store a batch of `program`; it answers once every item is stored, and bulk workers take them in turn."""
        s, caller = self.settings, self.caller
        max_items = s.batch_max_items
        if caller.owner is not None and s.key_batch_max_items > 0:
            max_items = min(max_items, s.key_batch_max_items)
        if len(items) > max_items:
            raise HTTPException(413, f"{len(items)} items; a batch may hold at most {max_items}")
        await self._check_version(program, options.version)
        await self._admit(options.webhook_url)
        batch_id = uuid.uuid4().hex
        claim = self._claim({"program": program, "items": items, **options.model_dump()}, batch_id)
        bind(batch_id=batch_id)
        async with self._undone_unless_stored(lambda: batch_store.delete_batch(self.redis, batch_id), claim):
            created = await batch_store.create_batch(
                self.redis, s, batch_id, program, items, options, now_s(), caller, claim
            )
        if isinstance(created, str):
            bind(batch_id=created)
            self.response.headers["Idempotent-Replayed"] = "true"
            return batch_from_fields(await batch_store.read_batch(self.redis, created, caller))
        BATCHES_SUBMITTED.labels(caller.name).inc()
        log.info("batch of %d items submitted (program %s, key %s)", len(items), program, caller.name)
        self.response.headers["Location"] = f"/batches/{batch_id}"
        # The batch as accepted, even if a bulk worker has already picked an item: what the client polls from.
        return batch_from_fields(created)

    @contextlib.asynccontextmanager
    async def _undone_unless_stored(
        self, delete: Callable[[], Awaitable[None]], claim: idempotency.Claim | None
    ) -> AsyncIterator[None]:
        """A Redis error is answered 503 (api/main.py), but the step may have run before the error reached us:
        `delete` what it may have stored, so nothing stays of work its client was told was not accepted."""
        try:
            yield
        except RedisError:
            with contextlib.suppress(RedisError):
                await delete()
                await idempotency.release(self.redis, claim)
            raise

    async def _check_version(self, program: str, version: str | None) -> None:
        """A job pinned to a version that no worker holds would fail: 422 now, naming those they hold."""
        if version is not None:
            check_loaded(await self.catalog.program(program, self.redis), version)

    async def _admit(self, webhook_url: str | None) -> None:
        await check_webhook_url(webhook_url, self.settings)
        await check_submission(self.redis, self.settings, self.caller)

    def _claim(self, body: dict[str, Any], new_id: str) -> idempotency.Claim | None:
        key = self.caller.scoped(self.idempotency_key)
        return idempotency.claim_for(key, body, new_id, self.settings.idempotency_ttl_s)

    async def _job_answer(self, job_id: str, wait: float | None, fields: dict[str, str] | None) -> Job | Response:
        self.response.headers["Location"] = f"/jobs/{job_id}"
        if wait:
            found = await self.waits.until_finished(self.caller, job_id, wait)
            if isinstance(found, str):
                # The finished record as its terminal event carries it: already the response body.
                headers = dict(self.response.headers)
                return Response(found, status.HTTP_200_OK, headers=headers, media_type="application/json")
            fields = found
        elif fields is None:
            fields = await job_store.read_job(self.redis, job_id, self.caller)
        if fields is None:
            raise HTTPException(
                409, "the original request with this Idempotency-Key was not stored (or has expired); retry"
            )
        job = job_from_fields(fields, JobLinks.for_job(job_id))
        if job.status.is_terminal:
            self.response.status_code = status.HTTP_200_OK
        return job


async def _submission(
    request: Request, response: Response, caller: CallerDep, idempotency_key: IdempotencyKey = None
) -> Submission:
    state = request.app.state
    return Submission(
        state.redis, state.celery, state.waits, get_settings(), caller, idempotency_key, response, state.catalog
    )


SubmissionDep = Annotated[Submission, Depends(_submission)]


def add_job_route(
    router: APIRouter,
    path: str,
    program: str,
    body_model: type[JobOptions],
    job_model: type[Job],
    inputs_of: Callable[[Any], dict[str, Any]],
    doc: str,
) -> None:
    """`POST <path>`: one job of `program`, its input taken from a `body_model` body by `inputs_of`."""

    async def submit_job(
        body: body_model,  # type: ignore[valid-type]
        submission: SubmissionDep,
        wait: WaitQuery = None,
    ) -> Job | Response:
        return await submission.job(program, inputs_of(body), body, wait)

    submit_job.__doc__ = doc
    router.add_api_route(
        path,
        submit_job,
        methods=["POST"],
        status_code=status.HTTP_202_ACCEPTED,
        response_model=job_model,
        summary=f"Submit a {program} job",
        responses={**JOB_RESPONSES, 200: {"model": job_model, **JOB_RESPONSES[200]}},
    )


def add_batch_route(
    router: APIRouter,
    path: str,
    program: str,
    body_model: type[BatchOptions],
    items_of: Callable[[Any], list[StoredItem]],
    doc: str,
) -> None:
    """`POST <path>`: a batch of `program` jobs, items taken from a `body_model` body by `items_of`."""

    async def submit_batch(body: body_model, submission: SubmissionDep) -> Batch:  # type: ignore[valid-type]
        return await submission.batch(program, items_of(body), body)

    submit_batch.__doc__ = doc
    router.add_api_route(
        path,
        submit_batch,
        methods=["POST"],
        status_code=status.HTTP_202_ACCEPTED,
        response_model=Batch,
        summary=f"Submit a {program} batch",
        responses=BATCH_RESPONSES,
    )
