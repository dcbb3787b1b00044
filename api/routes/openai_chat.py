"""OpenAI-compatible chat (`POST /v1/chat/completions`, `GET /v1/models`) and MLflow's scoring route
(`POST /invocations`): our programs behind the formats that chat front ends and callers of
`mlflow models serve` already speak.

A chat request is an ordinary job: it goes through the submission service (api/submission.py), so API keys
and ownership, the per-key limits and quotas, `Idempotency-Key` and the body limit hold as for `POST /jobs`;
interactive workers run it and `GET /jobs/{id}` reads it (the completion's id is `chatcmpl-<job id>`, and
`Location` names the job). How messages become inputs and records become answers is api/chat_format.py.
Errors are in OpenAI's shape (api/errors.py), which the `openai` package turns into its typed exceptions.

- Waiting: a request without `stream` waits for its job as `?wait=WAIT_MAX_S` would. A job still unfinished then
  is a 504 with the job id (`error.job_id`): it goes on, and its result is one poll away. Failures the job
  ended with, and that 504, carry `x-should-retry: false`, which the `openai` package obeys: its own retries
  would submit the same question again as a new job, while our workers have already retried what a retry
  could fix.
- Streaming follows the job's events as `GET /jobs/{id}/events` does (api/event_stream.py) and holds one of the
  key's event-stream slots. It runs until the job ends, like that route: its events never stop for long, and
  keep-alive comments fill the silences. Retries: see `chat_format.AnswerStream`.
- Every program is looked up per request in the catalog (api/program_catalog.py), like `POST /programs/{name}/jobs`
  does: a program served from MLflow has no fields until a worker has loaded it, and is listed by `GET /v1/models`
  while a worker serves it.
- A job is only asked to stream its tokens (`"stream": true` on the job) when they are sent on: a JSON answer
  is sent whole at the end, so its job runs with `"stream": false`, cheaper for the worker.
"""

import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import anyio
import redis.asyncio as aioredis
from fastapi import APIRouter, Path, Response
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from api import chat_format
from api.auth import UNAUTHORIZED, CallerDep
from api.chat_format import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatFormatError,
    ChatOptions,
    ChatProgram,
    ChatStream,
    InvocationsRequest,
    ModelList,
    ModelObject,
)
from api.deps import RedisDep, StreamsDep
from api.errors import OpenAIError
from api.event_hub import EventHub
from api.event_stream import follow
from api.key_slots import KeySlots
from api.program_catalog import Catalog, Program, UnknownProgram
from api.program_models import ProgramModels
from api.schemas import JobOptions
from api.submission import Submission, SubmissionDep
from core.jobs import Job, JobStatus

log = logging.getLogger(__name__)

_NO_RETRY = {"x-should-retry": "false"}
# What the submission says about the job that is worth passing on.
_JOB_HEADERS = ("location", "idempotent-replayed")

_CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": ChatCompletion,
        "description": "The `chat.completion`; with `stream`, `chat.completion.chunk` events, then `data: [DONE]`.",
        "content": {"text/event-stream": {}},
    },
    400: {"description": "An invalid request, or a last user message the program cannot take (`param` says which)."},
    404: {"description": "No program with this name (`model_not_found`)."},
    408: {"description": "The job expired before a worker started it (`JobExpired`)."},
    409: {"description": "The job was cancelled, or this Idempotency-Key's original request was never stored."},
    413: {"description": "The body is too large, or the job failed: the LM's context window was exceeded."},
    422: {"description": "The job failed: the LM's output could not be parsed (`AdapterParseError`)."},
    429: {"description": "Over this key's submission rate or event streams, or the job was rate limited."},
    500: {"description": "The job failed unexpectedly."},
    502: {"description": "The job failed: the LM provider answered an error."},
    503: {"description": "The program cannot be served (the reason is given), or Redis is unavailable."},
    504: {"description": "The job did not finish within WAIT_MAX_S (it goes on: `error.job_id`), or it timed out."},
}


def _record(found: Job | Response) -> dict[str, Any]:
    """The public record, whichever form the submission answered it in."""
    if isinstance(found, Response):
        record: dict[str, Any] = json.loads(bytes(found.body))
        return record
    return found.model_dump(mode="json")


def _job_headers(response: Response) -> dict[str, str]:
    return {name: response.headers[name] for name in _JOB_HEADERS if name in response.headers}


async def _chunks(
    redis: aioredis.Redis, hub: EventHub, chat: ChatStream, shutdown: anyio.Event
) -> AsyncIterator[bytes]:
    yield chat.start()
    try:
        async for batch in follow(redis, hub, chat.job_id, 0, shutdown):
            out = b"".join(chat.event(event.type, json.loads(event.data)) for event in batch)
            if out:
                yield out
    except (RedisError, TimeoutError) as e:
        log.warning("chat stream of job %s ended early: %s", chat.job_id, e)
    if not chat.done:
        yield chat.interrupted()


def _created(program: Program) -> int:
    """When the version served was made, as OpenAI's `created`: the artifact's build, or MLflow's version."""
    metadata = program.metadata or {}
    if program.mlflow_uri is not None:
        return int(metadata.get("created_at_ms") or 0) // 1000
    try:
        built = metadata.get("built_at")
        return int(datetime.fromisoformat(str(built)).timestamp()) if built else 0
    except ValueError:
        return 0


def build_router(catalog: Catalog) -> APIRouter:
    router = APIRouter(tags=["openai"], responses=UNAUTHORIZED)
    # A program's models never change while they are served (an MLflow version's included): built once.
    built: dict[ProgramModels, ChatProgram] = {}

    async def program_of(name: str, param: str, redis: aioredis.Redis) -> ChatProgram:
        try:
            program = await catalog.program(name, redis)
        except UnknownProgram as e:
            raise OpenAIError(
                404,
                f"the model {name!r} does not exist; the models are this API's programs: {e.known}",
                param=param,
                code="model_not_found",
            ) from e
        models = program.models
        if models is None:
            raise OpenAIError(
                503,
                f"program {name!r} cannot be served: {program.problem}",
                param=param,
                code="model_unavailable",
                headers=_NO_RETRY,
            )
        if models not in built:
            built[models] = ChatProgram.of(name, models.input, models.output.model_json_schema())
        return built[models]

    async def chat(
        program: ChatProgram,
        body: ChatOptions,
        as_json: bool,
        submission: Submission,
        streams: KeySlots,
    ) -> Response:
        try:
            inputs = chat_format.program_input(program, body.messages)
        except ChatFormatError as e:
            raise OpenAIError(400, e.message, param=e.param) from e
        streams_tokens = body.stream and not as_json and program.answer_field is not None
        options = JobOptions(temperature=body.temperature, stream=streams_tokens)
        settings, response = submission.settings, submission.response
        if not body.stream:
            record = _record(await submission.job(program.name, inputs, options, settings.wait_max_s))
            status = JobStatus(record["status"])
            if status is JobStatus.succeeded:
                return JSONResponse(chat_format.completion(program, record, as_json), headers=_job_headers(response))
            code, error = (
                chat_format.job_failure(record)
                if status.is_terminal
                else chat_format.still_running(record, settings.wait_max_s)
            )
            return JSONResponse(error, code, headers={**_job_headers(response), **_NO_RETRY})
        # The slot first: a stream the key may not open must not leave a job behind.
        stream = await streams.open(submission.caller, "job")
        try:
            record = _record(await submission.job(program.name, inputs, options))
        except BaseException:
            await streams.close(stream)
            raise
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        writer = ChatStream(program, str(record["id"]), chat_format.created_s(record), as_json, include_usage)
        shutdown = anyio.Event()
        return EventSourceResponse(
            _chunks(submission.redis, submission.waits.hub, writer, shutdown),
            shutdown_event=shutdown,
            shutdown_grace_period=1.0,
            ping=settings.sse_ping_s,
            headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache", **_job_headers(response)},
            send_timeout=settings.sse_send_timeout_s,
            background=BackgroundTask(streams.close, stream),
        )

    @router.post("/v1/chat/completions", response_model=None, responses=_CHAT_RESPONSES)
    async def chat_completions(
        body: ChatCompletionRequest, submission: SubmissionDep, streams: StreamsDep, redis: RedisDep
    ) -> Response:
        """OpenAI's chat completion: `model` is a program; the last user message is its input (docs/api.md).
        Runs as a job; waits for it up to WAIT_MAX_S, or streams it with `stream`."""
        program = await program_of(body.model, "model", redis)
        as_json = body.response_format is not None and body.response_format.type != "text"
        return await chat(program, body, as_json, submission, streams)

    @router.post("/invocations", response_model=None, responses=_CHAT_RESPONSES)
    async def invocations(
        body: InvocationsRequest, submission: SubmissionDep, streams: StreamsDep, redis: RedisDep
    ) -> Response:
        """MLflow's scoring route for chat models (`mlflow models serve`): the same job and completion, with the
        whole prediction as JSON in `choices[0].message.content`. The program: `model`, or `params.program`, or
        the default program."""
        chosen = body.params.program if body.params is not None else None
        if body.model is not None and chosen is not None and body.model != chosen:
            raise OpenAIError(400, "`model` and `params.program` name different programs; give one", param="model")
        if chosen is not None:
            program = await program_of(chosen, "params.program", redis)
        else:
            program = await program_of(body.model or catalog.default, "model", redis)
        return await chat(program, body, True, submission, streams)

    async def served(redis: aioredis.Redis) -> list[ModelObject]:
        return [ModelObject(id=p.name, created=_created(p)) for p in await catalog.all(redis) if p.available]

    @router.get("/v1/models", response_model=ModelList)
    async def list_models(redis: RedisDep, _caller: CallerDep) -> ModelList:
        """The programs, as OpenAI's models: a chat request names one as its `model`. Programs that cannot be
        served now are left out (`GET /programs` says why)."""
        return ModelList(data=await served(redis))

    @router.get(
        "/v1/models/{model}",
        response_model=ModelObject,
        responses={404: {"description": "No program with this name that can be served (`model_not_found`)."}},
    )
    async def get_model(
        model: Annotated[str, Path(description="A program's name.")], redis: RedisDep, _caller: CallerDep
    ) -> ModelObject:
        """One program, as OpenAI's model."""
        for found in await served(redis):
            if found.id == model:
                return found
        raise OpenAIError(404, f"the model {model!r} does not exist here", param="model", code="model_not_found")

    return router
