"""OpenAI-compatible files (`/v1/files`): batch input files uploaded by a key, output and error files we write.

A file is a record (`keys.openai_file`) and its bytes (`keys.openai_file_content`),
kept `OPENAI_FILE_TTL_S` (7 days) and listed per key (`keys.openai_listing`).
An upload belongs to the key that made it (another key gets 404) and counts
against its stored-bytes quota (api/quotas.py), in the Redis step that
stores it (`file_create`). Output and error files are written when their
batch ends (api/openai_batches.py) and belong to the batch's key.
"""

import time
import uuid
from typing import Any, Literal, cast

import redis.asyncio as aioredis
from pydantic import BaseModel

from api import quotas
from api.auth import Caller
from api.errors import OpenAIError
from core import keys, scripts
from core.settings import Settings


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


def scopes(caller: Caller) -> tuple[str, str]:
    """The listing scope of the caller's own records, and the one every key's are in."""
    return caller.bucket, keys.EVERY_SCOPE


def _public(fields: dict[str, str]) -> FileObject:
    return FileObject(
        id=fields["id"],
        bytes=int(fields["bytes"]),
        created_at=int(float(fields["created_at"])),
        expires_at=int(float(fields["expires_at"])),
        filename=fields["filename"],
        purpose=fields["purpose"],
    )


async def create(
    redis: aioredis.Redis,
    settings: Settings,
    caller: Caller,
    content: bytes,
    filename: str,
    purpose: str,
    batch_id: str | None = None,
) -> FileObject:
    """Store a file; an upload within the caller's quota (429 past it), an output file (`batch_id`) without."""
    file_id = f"file-{uuid.uuid4().hex}"
    now = time.time()
    fields = {
        "id": file_id,
        "owner": caller.owner or "",
        "bytes": str(len(content)),
        "created_at": repr(now),
        "expires_at": repr(now + settings.openai_file_ttl_s),
        "filename": filename,
        "purpose": purpose,
    }
    if batch_id is not None:
        fields["batch"] = batch_id
    own, every = scopes(caller)
    # An output file is ours, written from records already counted: it is charged nothing.
    quota = quotas.quota_for(settings, caller, 0 if batch_id else len(content))
    script_keys = [
        keys.openai_file(file_id),
        keys.openai_file_content(file_id),
        keys.openai_listing(own, "files"),
        keys.openai_listing(every, "files"),
        *quota.keys,
    ]
    args: list[scripts.Arg] = [settings.openai_file_ttl_s, file_id, repr(now), *quota.args, len(fields)]
    for pair in fields.items():
        args += pair
    # The content is UTF-8 (JSONL): the routes refuse anything else.
    stored = await scripts.acall(redis, "file_create", script_keys, [*args, content.decode()])
    if isinstance(stored, list):
        refusal = quotas.refused(stored, len(content))
        raise OpenAIError(429, str(refusal.detail), code="quota_exceeded", headers=dict(refusal.headers or {}))
    return _public(fields)


async def record(redis: aioredis.Redis, caller: Caller, file_id: str) -> dict[str, str]:
    """A file's record; 404 (OpenAI's shape) when there is none or it is another key's."""
    fields = cast(dict[str, str], await redis.hgetall(keys.openai_file(file_id)))
    if not fields or not caller.can_see(fields.get("owner") or None):
        raise OpenAIError(404, f"no file with id {file_id!r}", param="file_id", code="file_not_found")
    return fields


async def get(redis: aioredis.Redis, caller: Caller, file_id: str) -> FileObject:
    return _public(await record(redis, caller, file_id))


async def content(redis: aioredis.Redis, caller: Caller, file_id: str) -> bytes:
    await record(redis, caller, file_id)
    found: Any = await redis.get(keys.openai_file_content(file_id))
    if found is None:
        raise OpenAIError(404, f"file {file_id!r} has no content any more (expired)", code="file_not_found")
    return found if isinstance(found, bytes) else str(found).encode()


async def delete(redis: aioredis.Redis, caller: Caller, file_id: str) -> FileDeleted:
    await record(redis, caller, file_id)
    own, every = scopes(caller)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.openai_file(file_id), keys.openai_file_content(file_id))
        pipe.zrem(keys.openai_listing(own, "files"), file_id)
        pipe.zrem(keys.openai_listing(every, "files"), file_id)
        await pipe.execute()
    return FileDeleted(id=file_id)


async def listing(
    redis: aioredis.Redis, caller: Caller, after: str | None, limit: int, purpose: str | None
) -> FileList:
    """The caller's files, newest first, after the file `after`."""
    scope = keys.EVERY_SCOPE if caller.admin else caller.bucket
    ids = await page_after(redis, keys.openai_listing(scope, "files"), after, limit + 1)
    found = []
    for file_id in ids:
        fields = cast(dict[str, str], await redis.hgetall(keys.openai_file(file_id)))
        if fields and (purpose is None or fields["purpose"] == purpose):
            found.append(_public(fields))
    data = found[:limit]
    return FileList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=len(ids) > limit,
    )


async def page_after(redis: aioredis.Redis, index: str, after: str | None, count: int) -> list[str]:
    """Up to `count` ids of `index`, newest first, after the id `after` (OpenAI's cursor)."""
    top = "+inf"
    if after is not None:
        score = await redis.zscore(index, after)
        if score is None:
            raise OpenAIError(400, f"`after` names no listed object ({after!r})", param="after")
        top = f"({score!r}"
    found = await redis.zrevrangebyscore(index, top, "-inf", start=0, num=count)
    return [str(i) for i in found]
