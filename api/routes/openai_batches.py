"""OpenAI's Files and Batch APIs (`/v1/files`, `/v1/batches`), for tools that already speak them.

Upload a JSONL file of chat requests with `purpose=batch`, create a batch
from it, poll it, read its output and error files, cancel it: as with
OpenAI, and the `openai` package unchanged (api/openai_files.py,
api/openai_batches.py). The batch runs as one of ours. Errors are in
OpenAI's shape (api/errors.py).
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import Response

from api import openai_batches, openai_files
from api.auth import UNAUTHORIZED, CallerDep
from api.deps import RedisDep, SettingsDep
from api.errors import OpenAIError
from api.openai_batches import BatchCreate, BatchList, OpenAIBatch, Reader
from api.openai_files import FileDeleted, FileList, FileObject
from api.program_catalog import Catalog
from api.submission import SubmissionDep

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such object for this key."}}
# OpenAI answers an invalid request 400 (not 422), naming the parameter (api/main.py).
_INVALID: dict[int | str, dict[str, Any]] = {400: {"description": "An invalid request; `param` names what."}}
Limit = Annotated[int, Query(ge=1, le=100)]


async def _reader(redis: RedisDep, settings: SettingsDep, caller: CallerDep) -> Reader:
    return Reader(redis, settings, caller)


ReaderDep = Annotated[Reader, Depends(_reader)]


def build_router(catalog: Catalog) -> APIRouter:
    router = APIRouter(tags=["openai"], responses={**UNAUTHORIZED, **_INVALID})

    @router.post(
        "/v1/files",
        response_model=FileObject,
        responses={400: {"description": "Not a UTF-8 file, or another purpose."}, 413: {"description": "Too large."}},
    )
    async def upload_file(
        file: Annotated[UploadFile, File(description="A JSONL file of requests.")],
        purpose: Annotated[str, Form(description="Only `batch`.")],
        redis: RedisDep,
        settings: SettingsDep,
        caller: CallerDep,
    ) -> FileObject:
        """Upload a batch input file (JSONL, one request a line); it counts against this key's stored bytes."""
        if purpose != "batch":
            raise OpenAIError(400, "only purpose=batch files are taken here", param="purpose")
        content = await file.read()
        try:
            content.decode()
        except UnicodeDecodeError as e:
            raise OpenAIError(400, f"the file is not UTF-8 text ({e.reason} at byte {e.start})", param="file") from e
        return await openai_files.create(redis, settings, caller, content, file.filename or "input.jsonl", purpose)

    @router.get("/v1/files", response_model=FileList)
    async def list_files(
        redis: RedisDep,
        caller: CallerDep,
        after: str | None = None,
        limit: Limit = 20,
        purpose: str | None = None,
    ) -> FileList:
        """This key's files, newest first."""
        return await openai_files.listing(redis, caller, after, limit, purpose)

    @router.get("/v1/files/{file_id}", response_model=FileObject, responses=_NOT_FOUND)
    async def get_file(file_id: str, redis: RedisDep, caller: CallerDep) -> FileObject:
        """One file."""
        return await openai_files.get(redis, caller, file_id)

    @router.get(
        "/v1/files/{file_id}/content",
        response_class=Response,
        responses={200: {"content": {"application/jsonl": {}}}, **_NOT_FOUND},
    )
    async def file_content(file_id: str, redis: RedisDep, caller: CallerDep) -> Response:
        """A file's bytes: an input file as uploaded; an output or error file, one result a line."""
        return Response(await openai_files.content(redis, caller, file_id), media_type="application/jsonl")

    @router.delete("/v1/files/{file_id}", response_model=FileDeleted, responses=_NOT_FOUND)
    async def delete_file(file_id: str, redis: RedisDep, caller: CallerDep) -> FileDeleted:
        """Delete a file (a batch made from it goes on: its items hold their inputs)."""
        return await openai_files.delete(redis, caller, file_id)

    @router.post(
        "/v1/batches",
        response_model=OpenAIBatch,
        responses={400: {"description": "Another endpoint or completion window."}, **_NOT_FOUND},
    )
    async def create_batch(body: BatchCreate, submission: SubmissionDep) -> OpenAIBatch:
        """Run an input file's requests as a batch; a file with an invalid line makes a `failed` batch whose
        `errors` name each line."""
        return await openai_batches.create(submission, catalog, body)

    @router.get("/v1/batches", response_model=BatchList)
    async def list_batches(reader: ReaderDep, after: str | None = None, limit: Limit = 20) -> BatchList:
        """This key's batches, newest first."""
        return await openai_batches.listing_page(reader, catalog, after, limit)

    @router.get("/v1/batches/{batch_id}", response_model=OpenAIBatch, responses=_NOT_FOUND)
    async def get_batch(batch_id: str, reader: ReaderDep) -> OpenAIBatch:
        """One batch: its status, counts and, once it has ended, its output and error files."""
        return await openai_batches.view(reader, catalog, batch_id)

    @router.post("/v1/batches/{batch_id}/cancel", response_model=OpenAIBatch, responses=_NOT_FOUND)
    async def cancel_batch(batch_id: str, reader: ReaderDep) -> OpenAIBatch:
        """Cancel: requests not started never run; it is `cancelling` until the running ones finish."""
        return await openai_batches.cancel(reader, catalog, batch_id)

    @router.post(
        "/v1/batches/{batch_id}/retry",
        response_model=OpenAIBatch,
        responses={**_NOT_FOUND, 409: {"description": "It has not ended."}, 422: {"description": "Nothing failed."}},
    )
    async def retry_batch(batch_id: str, submission: SubmissionDep) -> OpenAIBatch:
        """Ours, not OpenAI's: a new input file of the requests that did not succeed, and a batch of it
        (`retry_of`)."""
        return await openai_batches.retry(submission, catalog, batch_id)

    return router
