"""OpenAI-compatible batches (`/v1/batches`): an input file run as one of our batches, answered as OpenAI does.

Creating one reads its input file and checks every line before anything
runs (api/batch_file.py). A file with any invalid line makes a batch that is
`failed` at once, with `errors.data` naming each line and why; nothing of
it runs. A valid one is submitted as an ordinary batch of the program its
lines name (api/submission.py: the key's rate, quotas, Idempotency-Key),
so capacity, fairness across keys, expiry, webhooks and cancel all apply,
and `GET /batches/{id}` shows it too. Its record (`keys.openai_batch`) holds
the input file, our batch's id, and the times OpenAI's object reports.

Its status follows our batch: `in_progress` while items wait or run,
`cancelling`, then, once our batch has ended, `finalizing` while the output
and error files are written (the first read that sees the end writes them,
under a lock, so a second reader sees `finalizing`), then `completed`,
`cancelled` or `expired`. Items that succeeded go to the output file, the
others to the error file; `request_counts` counts them.
"""

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from api import batch_file, batch_store, listing, openai_files
from api.auth import Caller
from api.chat_format import ChatProgram
from api.errors import OpenAIError
from api.program_catalog import Catalog
from api.schemas import BatchOptions
from api.submission import Submission
from core import keys
from core.batches import TERMINAL_BATCH_STATUSES, BatchStatus, item_id
from core.settings import Settings

COMPLETION_WINDOW = "24h"
WINDOW_S = 24 * 3600
_PAGE = 500
_FINALIZE_LOCK_S = 300


Status = Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"]


class BatchCreate(BaseModel):
    input_file_id: str = Field(min_length=1, max_length=128)
    endpoint: str = Field(description=f"Only `{batch_file.ENDPOINT}`: the requests are chat completions.")
    completion_window: str = Field(description=f"Only `{COMPLETION_WINDOW}`.")
    metadata: dict[str, str] | None = Field(None, max_length=16)


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]


class OpenAIBatch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: Literal[
        "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
    ]
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts | None = None
    metadata: dict[str, str] | None = None
    model: str | None = None
    batch_id: str | None = Field(None, description="Ours: the batch that runs it (`GET /batches/{id}`).")
    retry_of: str | None = Field(None, description="Ours: the batch whose failures this one runs again.")


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIBatch]
    first_id: str | None
    last_id: str | None
    has_more: bool


def _int(value: str | None) -> int | None:
    return int(float(value)) if value else None


async def chat_programs(catalog: Catalog, redis: aioredis.Redis) -> dict[str, ChatProgram | str]:
    """Every program as a request's `model` may name it: the program, or why it cannot run now."""
    found: dict[str, ChatProgram | str] = {}
    for program in await catalog.all(redis):
        if program.models is None:
            found[program.name] = f"program {program.name!r} cannot be served: {program.problem}"
        else:
            models = program.models
            found[program.name] = ChatProgram.of(program.name, models.input, models.output.model_json_schema())
    return found


async def create(
    submission: Submission, catalog: Catalog, body: BatchCreate, retry_of: str | None = None
) -> OpenAIBatch:
    """Check the input file's every line, then run it as one of our batches, or fail it naming the lines."""
    redis, settings, caller = submission.redis, submission.settings, submission.caller
    if body.endpoint != batch_file.ENDPOINT:
        raise OpenAIError(400, f"endpoint must be {batch_file.ENDPOINT}: the only one batches run", param="endpoint")
    if body.completion_window != COMPLETION_WINDOW:
        raise OpenAIError(400, f"completion_window must be {COMPLETION_WINDOW}", param="completion_window")
    input_file = await openai_files.record(redis, caller, body.input_file_id)
    if input_file["purpose"] != "batch":
        raise OpenAIError(400, "the input file's purpose must be batch", param="input_file_id")
    content = await openai_files.content(redis, caller, body.input_file_id)
    programs = await chat_programs(catalog, redis)
    requests = batch_file.read_requests(
        content, lambda name: programs.get(name, f"no program named {name!r}"), settings.batch_max_items
    )
    batch_id = f"batch_{uuid.uuid4().hex}"
    now = time.time()
    fields = {
        "id": batch_id,
        "owner": caller.owner or "",
        "input_file_id": body.input_file_id,
        "endpoint": body.endpoint,
        "completion_window": body.completion_window,
        "created_at": repr(now),
        "expires_at": repr(now + WINDOW_S),
        "metadata": json.dumps(body.metadata or {}),
    }
    if retry_of is not None:
        fields["retry_of"] = retry_of
    if requests.errors:
        fields |= {
            "status": "failed",
            "failed_at": repr(now),
            "errors": json.dumps([e.public() for e in requests.errors]),
        }
    else:
        assert requests.program is not None
        options = BatchOptions(temperature=requests.temperature, expires_after_s=WINDOW_S)
        ours = await submission.batch(requests.program, requests.items, options)
        fields |= {"batch": ours.id, "model": requests.program, "as_json": "1" if requests.as_json else "0"}
    own, every = openai_files.scopes(caller)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.openai_batch(batch_id), mapping=fields)  # type: ignore[arg-type]  # redis-py: invariant keys
        pipe.expire(keys.openai_batch(batch_id), settings.openai_file_ttl_s)
        pipe.zadd(keys.openai_listing(own, "batches"), {batch_id: now})
        pipe.zadd(keys.openai_listing(every, "batches"), {batch_id: now})
        await pipe.execute()
    return await view(Reader(redis, settings, caller), catalog, batch_id)


@dataclass(frozen=True)
class Reader:
    """What reading a batch needs (its files are written by the first read after its end)."""

    redis: aioredis.Redis
    settings: Settings
    caller: Caller


async def record(redis: aioredis.Redis, caller: Caller, batch_id: str) -> dict[str, str]:
    fields = cast(dict[str, str], await redis.hgetall(keys.openai_batch(batch_id)))
    if not fields or not caller.can_see(fields.get("owner") or None):
        raise OpenAIError(404, f"no batch with id {batch_id!r}", param="batch_id", code="batch_not_found")
    return fields


async def view(reader: Reader, catalog: Catalog, batch_id: str) -> OpenAIBatch:
    """The batch as OpenAI's object, its files written first if our batch has just ended."""
    redis = reader.redis
    fields = await record(redis, reader.caller, batch_id)
    ours = cast(dict[str, str], await redis.hgetall(keys.batch(fields["batch"]))) if fields.get("batch") else {}
    if ours and BatchStatus(ours["status"]) in TERMINAL_BATCH_STATUSES and not fields.get("finished_at"):
        fields = await _finalize(reader, catalog, fields, ours)
    return _public(fields, ours)


def _public(fields: dict[str, str], ours: dict[str, str]) -> OpenAIBatch:
    status, counts = _status(fields, ours), None
    if ours:
        n = {name: int(ours.get(f"n_{name}", 0)) for name in ("succeeded", "failed", "expired", "cancelled")}
        failed = n["failed"] + (n["expired"] + n["cancelled"] if fields.get("finished_at") else 0)
        counts = RequestCounts(total=int(ours["total"]), completed=n["succeeded"], failed=failed)
    errors = json.loads(fields["errors"]) if fields.get("errors") else None
    ended = _int(fields.get("finished_at"))
    return OpenAIBatch(
        id=fields["id"],
        endpoint=fields["endpoint"],
        errors=BatchErrors(data=errors) if errors else None,
        input_file_id=fields["input_file_id"],
        completion_window=fields["completion_window"],
        status=status,
        output_file_id=fields.get("output_file_id") or None,
        error_file_id=fields.get("error_file_id") or None,
        created_at=int(float(fields["created_at"])),
        in_progress_at=int(float(fields["created_at"])) if ours else None,
        expires_at=_int(fields.get("expires_at")),
        finalizing_at=_int(fields.get("finalizing_at")),
        completed_at=ended if status == "completed" else None,
        failed_at=_int(fields.get("failed_at")),
        expired_at=ended if status == "expired" else None,
        cancelling_at=_int(fields.get("cancelling_at")),
        cancelled_at=ended if status == "cancelled" else None,
        request_counts=counts,
        metadata=json.loads(fields.get("metadata") or "{}") or None,
        model=fields.get("model"),
        batch_id=fields.get("batch"),
        retry_of=fields.get("retry_of"),
    )


def _status(fields: dict[str, str], ours: dict[str, str]) -> Status:
    if fields.get("status") == "failed":
        return "failed"
    if not ours:
        return "expired"  # our batch's record has expired with its TTL
    status = BatchStatus(ours["status"])
    if status in (BatchStatus.queued, BatchStatus.running):
        return "in_progress"
    if status is BatchStatus.cancelling:
        return "cancelling"
    if not fields.get("finished_at"):
        return "finalizing"
    if status is BatchStatus.completed:
        return "completed"
    return "cancelled" if status is BatchStatus.cancelled else "expired"


async def _finalize(reader: Reader, catalog: Catalog, fields: dict[str, str], ours: dict[str, str]) -> dict[str, str]:
    """Write the output and error files of a batch whose run has ended; a reader that finds another writing
    them sees `finalizing`."""
    redis, batch_id = reader.redis, fields["id"]
    if not await redis.set(f"{keys.openai_batch(batch_id)}:finalizing", "1", nx=True, ex=_FINALIZE_LOCK_S):
        return fields
    await redis.hset(keys.openai_batch(batch_id), "finalizing_at", repr(time.time()))
    program = (await chat_programs(catalog, redis)).get(fields["model"])
    if not isinstance(program, ChatProgram):
        raise OpenAIError(503, f"program {fields['model']!r} cannot be read now: {program}; retry later")
    as_json = fields.get("as_json") == "1"
    written: dict[str, str] = {}
    owner = Caller(name="batch", owner=fields.get("owner") or None)
    for succeeded, name in ((True, "output_file_id"), (False, "error_file_id")):
        content = b"".join([chunk async for chunk in _lines(redis, ours, succeeded, program, as_json)])
        if content:
            purpose = "batch_output"
            filename = f"{batch_id}_{'output' if succeeded else 'error'}.jsonl"
            made = await openai_files.create(
                redis, reader.settings, owner, content, filename, purpose, batch_id=batch_id
            )
            written[name] = made.id
    written["finished_at"] = ours.get("finished_at") or repr(time.time())
    await redis.hset(keys.openai_batch(batch_id), mapping=written)  # type: ignore[arg-type]  # redis-py
    return {**fields, **written, "finalizing_at": fields.get("finalizing_at") or written["finished_at"]}


async def _lines(
    redis: aioredis.Redis, ours: dict[str, str], succeeded: bool, program: ChatProgram, as_json: bool
) -> AsyncIterator[bytes]:
    """The output (`succeeded`) or error file, a page of items at a time, in the batch's order."""
    total = int(ours["total"])
    for start in range(0, total, _PAGE):
        ids = [item_id(ours["id"], i) for i in range(start, min(start + _PAGE, total))]
        records = [job.model_dump(mode="json") for job in await listing.jobs(redis, ids)]
        yield batch_file.lines_of(records, succeeded, program, as_json)


async def cancel(reader: Reader, catalog: Catalog, batch_id: str) -> OpenAIBatch:
    redis = reader.redis
    fields = await record(redis, reader.caller, batch_id)
    if fields.get("batch"):
        ours = cast(dict[str, str], await redis.hgetall(keys.batch(fields["batch"])))
        if ours and BatchStatus(ours["status"]) not in TERMINAL_BATCH_STATUSES:
            await redis.hset(keys.openai_batch(batch_id), "cancelling_at", repr(time.time()))
            await batch_store.request_cancel(redis, reader.settings, fields["batch"], reader.caller)
    return await view(reader, catalog, batch_id)


async def listing_page(reader: Reader, catalog: Catalog, after: str | None, limit: int) -> BatchList:
    caller = reader.caller
    scope = keys.EVERY_SCOPE if caller.admin else caller.bucket
    ids = await openai_files.page_after(reader.redis, keys.openai_listing(scope, "batches"), after, limit + 1)
    data = []
    for batch_id in ids[:limit]:
        try:
            data.append(await view(reader, catalog, batch_id))
        except OpenAIError:
            continue  # expired meanwhile
    return BatchList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=len(ids) > limit,
    )


async def retry(submission: Submission, catalog: Catalog, batch_id: str) -> OpenAIBatch:
    """A new input file of the requests that did not succeed, and a new batch of it (`retry_of`)."""
    redis, caller = submission.redis, submission.caller
    fields = await record(redis, caller, batch_id)
    batch = await view(Reader(redis, submission.settings, caller), catalog, batch_id)
    if batch.status not in ("completed", "cancelled", "expired"):
        raise OpenAIError(409, f"batch {batch_id} is {batch.status}; retry it once it has ended")
    ours = cast(dict[str, str], await redis.hgetall(keys.batch(fields["batch"])))
    done = {
        job.custom_id
        for job in await listing.jobs(redis, [item_id(ours["id"], i) for i in range(int(ours["total"]))])
        if job.status == "succeeded"
    }
    original = await openai_files.content(redis, caller, fields["input_file_id"])
    again = [line for line in original.splitlines() if line.strip() and json.loads(line)["custom_id"] not in done]
    if not again:
        raise OpenAIError(422, f"batch {batch_id} has no request left to run again")
    new_file = await openai_files.create(
        redis, submission.settings, caller, b"\n".join(again) + b"\n", f"{batch_id}_retry.jsonl", "batch"
    )
    body = BatchCreate(
        input_file_id=new_file.id,
        endpoint=fields["endpoint"],
        completion_window=fields["completion_window"],
        metadata=json.loads(fields.get("metadata") or "{}") or None,
    )
    return await create(submission, catalog, body, retry_of=batch_id)
