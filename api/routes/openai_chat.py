"""OpenAI-compatible chat (`POST /v1/chat/completions`, `GET /v1/models`) and MLflow's scoring route
(`POST /invocations`): our programs behind the formats that chat front ends and callers of
`mlflow models serve` already speak.

A chat request is an ordinary job: it goes through `jobs.submit`, so API keys and ownership, the per-key
submission rate, `Idempotency-Key` and the body limit hold as for `POST /jobs`; interactive workers run it and
`GET /jobs/{id}` reads it (the completion's id is `chatcmpl-<job id>`, and `Location` names the job). How
messages become inputs and records become answers is api/chat_format.py. Errors are in OpenAI's shape
(api/errors.py), which the `openai` package turns into its typed exceptions.

- Waiting: a request without `stream` waits for its job as `?wait=WAIT_MAX_S` would. A job still unfinished then
  is a 504 with the job id (`error.job_id`): it goes on, and its result is one poll away. Failures the job
  ended with, and that 504, carry `x-should-retry: false`, which the `openai` package obeys: its own retries
  would submit the same question again as a new job, while our workers have already retried what a retry
  could fix.
- Streaming follows the job's events as `GET /jobs/{id}/events` does (`events.follow`) and holds one of the
  key's event-stream slots. It runs until the job ends, like that route: its events never stop for long, and
  keep-alive comments fill the silences. Retries: see `chat_format.AnswerStream`.
- Programs served from MLflow (api/mlflow_programs.py) have no fields until a worker has loaded them: they
  are looked up per request, like `POST /programs/{name}/jobs` does, and listed by `GET /v1/models` while a
  worker serves them.
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
from celery import Celery
from fastapi import APIRouter, Path, Response
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from api import chat_format
from api.auth import UNAUTHORIZED, Caller, CallerDep
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
from api.deps import CeleryDep, RedisDep, SettingsDep, StreamsDep, WaitsDep
from api.errors import OpenAIError
from api.event_hub import EventHub
from api.idempotency import IdempotencyKey
from api.key_slots import KeySlots
from api.mlflow_programs import MlflowPrograms
from api.program_catalog import Catalog, CatalogEntry, ProgramModels
from api.routes import events, jobs
from api.schemas import JobOptions
from api.waits import Waits
from core.jobs import Job, JobStatus
from core.programs import ArtifactError, read_artifact_info
from core.settings import Settings

log = logging.getLogger(__name__)

_NO_RETRY = {"x-should-retry": "false"}
# What `jobs.submit` says about the job that is worth passing on.
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
    """The public record, whichever form `jobs.submit` answered it in."""
    if isinstance(found, Response):
        record: dict[str, Any] = json.loads(bytes(found.body))
        return record
    return found.model_dump(mode="json")


def _job_headers(response: Response) -> dict[str, str]:
    return {name: response.headers[name] for name in _JOB_HEADERS if name in response.headers}


def _built_at(entry: CatalogEntry) -> int:
    try:
        built = read_artifact_info(entry.name, entry.artifact).metadata.get("built_at")
        return int(datetime.fromisoformat(str(built)).timestamp()) if built else 0
    except (ArtifactError, ValueError):
        return 0


async def _chunks(
    redis: aioredis.Redis, hub: EventHub, chat: ChatStream, shutdown: anyio.Event
) -> AsyncIterator[bytes]:
    yield chat.start()
    try:
        async for batch in events.follow(redis, hub, chat.job_id, 0, shutdown):
            out = b"".join(chat.event(event.type, json.loads(event.data)) for event in batch)
            if out:
                yield out
    except (RedisError, TimeoutError) as e:
        log.warning("chat stream of job %s ended early: %s", chat.job_id, e)
    if not chat.done:
        yield chat.interrupted()


def build_router(catalog: Catalog) -> APIRouter:
    router = APIRouter(tags=["openai"], responses=UNAUTHORIZED)
    programs = {
        name: ChatProgram.of(name, entry.models.input, entry.models.output.model_json_schema())
        for name, entry in catalog.programs.items()
        if entry.models is not None
    }
    # Read once, like the catalog: a new artifact version changes what workers serve, not this list.
    models = [ModelObject(id=name, created=_built_at(catalog.programs[name])) for name in programs]
    from_mlflow = MlflowPrograms()
    # An MLflow version's models never change (api/mlflow_programs.py): its ChatProgram is built once.
    from_mlflow_built: dict[ProgramModels, ChatProgram] = {}

    async def mlflow_state(redis: aioredis.Redis, settings: Settings, name: str) -> tuple[ChatProgram | None, str]:
        state = await from_mlflow.state(redis, settings, name)
        if state.models is None:
            return None, str(state.problem)
        built = from_mlflow_built.get(state.models)
        if built is None:
            built = from_mlflow_built[state.models] = ChatProgram.of(
                name, state.models.input, state.models.output.model_json_schema()
            )
        return built, ""

    async def program_of(name: str, param: str, redis: aioredis.Redis, settings: Settings) -> ChatProgram:
        entry = catalog.programs.get(name)
        if entry is None:
            raise OpenAIError(
                404,
                f"the model {name!r} does not exist; the models are this API's programs: {sorted(catalog.programs)}",
                param=param,
                code="model_not_found",
            )
        program, problem = programs.get(name), entry.problem
        if program is None and entry.mlflow_uri is not None:
            program, problem = await mlflow_state(redis, settings, name)
        if program is None:
            raise OpenAIError(
                503,
                f"program {name!r} cannot be served: {problem}",
                param=param,
                code="model_unavailable",
                headers=_NO_RETRY,
            )
        return program

    async def chat(
        program: ChatProgram,
        body: ChatOptions,
        as_json: bool,
        response: Response,
        redis: aioredis.Redis,
        celery: Celery,
        waits: Waits,
        settings: Settings,
        caller: Caller,
        streams: KeySlots,
        idempotency_key: str | None,
    ) -> Response:
        try:
            inputs = chat_format.program_input(program, body.messages)
        except ChatFormatError as e:
            raise OpenAIError(400, e.message, param=e.param) from e
        streams_tokens = body.stream and not as_json and program.answer_field is not None
        options = JobOptions(temperature=body.temperature, stream=streams_tokens)

        async def submit(wait: float | None) -> dict[str, Any]:
            found = await jobs.submit(
                program.name, inputs, options, response, redis, celery, waits, settings, caller, idempotency_key, wait
            )
            return _record(found)

        if not body.stream:
            record = await submit(settings.wait_max_s)
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
        stream = await streams.open(caller, "job")
        try:
            record = await submit(None)
        except BaseException:
            await streams.close(stream)
            raise
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        writer = ChatStream(program, str(record["id"]), chat_format.created_s(record), as_json, include_usage)
        shutdown = anyio.Event()
        return EventSourceResponse(
            _chunks(redis, waits.hub, writer, shutdown),
            shutdown_event=shutdown,
            shutdown_grace_period=1.0,
            ping=settings.sse_ping_s,
            headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache", **_job_headers(response)},
            send_timeout=settings.sse_send_timeout_s,
            background=BackgroundTask(streams.close, stream),
        )

    @router.post("/v1/chat/completions", response_model=None, responses=_CHAT_RESPONSES)
    async def chat_completions(
        body: ChatCompletionRequest,
        response: Response,
        redis: RedisDep,
        celery: CeleryDep,
        waits: WaitsDep,
        settings: SettingsDep,
        caller: CallerDep,
        streams: StreamsDep,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        """OpenAI's chat completion: `model` is a program; the last user message is its input (docs/api.md).
        Runs as a job; waits for it up to WAIT_MAX_S, or streams it with `stream`."""
        program = await program_of(body.model, "model", redis, settings)
        as_json = body.response_format is not None and body.response_format.type != "text"
        return await chat(
            program, body, as_json, response, redis, celery, waits, settings, caller, streams, idempotency_key
        )

    @router.post("/invocations", response_model=None, responses=_CHAT_RESPONSES)
    async def invocations(
        body: InvocationsRequest,
        response: Response,
        redis: RedisDep,
        celery: CeleryDep,
        waits: WaitsDep,
        settings: SettingsDep,
        caller: CallerDep,
        streams: StreamsDep,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        """MLflow's scoring route for chat models (`mlflow models serve`): the same job and completion, with the
        whole prediction as JSON in `choices[0].message.content`. The program: `model`, or `params.program`, or
        the default program."""
        chosen = body.params.program if body.params is not None else None
        if body.model is not None and chosen is not None and body.model != chosen:
            raise OpenAIError(400, "`model` and `params.program` name different programs; give one", param="model")
        if chosen is not None:
            program = await program_of(chosen, "params.program", redis, settings)
        else:
            program = await program_of(body.model or catalog.default, "model", redis, settings)
        return await chat(
            program, body, True, response, redis, celery, waits, settings, caller, streams, idempotency_key
        )

    async def served_from_mlflow(redis: aioredis.Redis, settings: Settings) -> list[ModelObject]:
        served = []
        for name, entry in catalog.programs.items():
            if entry.mlflow_uri is not None:
                state = await from_mlflow.state(redis, settings, name)
                if state.available:
                    created_ms = (state.metadata or {}).get("created_at_ms")
                    served.append(ModelObject(id=name, created=int(created_ms or 0) // 1000))
        return served

    @router.get("/v1/models", response_model=ModelList)
    async def list_models(redis: RedisDep, settings: SettingsDep, _caller: CallerDep) -> ModelList:
        """The programs, as OpenAI's models: a chat request names one as its `model`. Programs that cannot be
        served now are left out (`GET /programs` says why)."""
        return ModelList(data=[*models, *await served_from_mlflow(redis, settings)])

    @router.get(
        "/v1/models/{model}",
        response_model=ModelObject,
        responses={404: {"description": "No program with this name that can be served (`model_not_found`)."}},
    )
    async def get_model(
        model: Annotated[str, Path(description="A program's name.")],
        redis: RedisDep,
        settings: SettingsDep,
        _caller: CallerDep,
    ) -> ModelObject:
        """One program, as OpenAI's model."""
        for found in [*models, *await served_from_mlflow(redis, settings)]:
            if found.id == model:
                return found
        raise OpenAIError(404, f"the model {model!r} does not exist here", param="model", code="model_not_found")

    return router
