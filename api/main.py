"""The FastAPI app: thin by design. It never imports dspy.

It stores the job record, enqueues the task by name, and reads records and
event logs back. Any Redis failure becomes a 503 with a reason instead of a
hang or a stack trace.
"""

import json
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

import patches
from api.auth import PUBLIC_PATHS, AuthMiddleware, parse_api_keys
from api.body_limit import BodyLimitMiddleware
from api.enqueue import task_messages
from api.errors import OpenAIError, document_errors, error_content, error_content_for, openai_error, openai_shaped
from api.event_hub import EventHub
from api.key_slots import KeySlots
from api.metrics import REQUESTS_REFUSED, on_process_exit
from api.paths import BATCH_SUBMISSIONS
from api.program_catalog import Catalog
from api.redis_memory import MemoryGuard, SubmissionGuard
from api.routes import (
    batches,
    events,
    feedback,
    health,
    jobs,
    metrics,
    models,
    openai_batches,
    openai_chat,
    optimizations,
    page,
    programs,
    replays,
    rollouts,
)
from api.waits import Waits
from core import scripts
from core.gc_tuning import tune_gc
from core.logging_setup import configure_logging
from core.queue import make_celery
from core.redis_clients import async_client
from core.replication import NotReplicated
from core.settings import get_settings

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    patches.install(patches.API, settings)
    # A blocking pool: a burst of requests waits briefly for a connection
    # instead of failing with "Too many connections".
    redis = async_client(
        settings,
        max_connections=settings.api_redis_max_connections,
        pool_timeout_s=settings.api_redis_pool_timeout_s,
        socket_timeout_s=5,
    )
    try:
        await scripts.aload(redis)
    except RedisError as e:
        # Loaded by the first call that needs it, once Redis answers.
        log.warning("Redis does not answer at startup (%s); serving 503 until it does", e)
    app.state.redis = redis
    app.state.celery = make_celery(settings)
    task_messages(app.state.celery)  # refuses broker options the API's messages cannot honour
    app.state.hub = EventHub(redis)
    app.state.streams = KeySlots.event_streams(redis, settings)
    app.state.waits = Waits(redis, app.state.hub, settings)
    await app.state.memory.start(redis)
    await app.state.hub.start()
    await app.state.streams.start()
    await app.state.waits.slots.start()
    try:
        yield
    finally:
        await app.state.waits.slots.stop()
        await app.state.memory.stop()
        await app.state.streams.stop()
        await app.state.hub.stop()
        await redis.aclose()
        on_process_exit(settings)


def _field_name(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


def _json_safe(value: Any) -> Any:
    """What JSON (and UTF-8) can carry: the errors echo the input, which may hold NaN,
    Infinity or a lone surrogate that Python's JSON parser accepts but no response can."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_json_safe(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _json_safe(jsonable_encoder(exc.errors()))
    message = "; ".join(f"{_field_name(tuple(e['loc']))}: {e['msg']}" for e in errors)
    if openai_shaped(request.url.path):
        # OpenAI answers an invalid request 400, naming the parameter; its clients expect that.
        param = _field_name(tuple(errors[0]["loc"])) if errors else None
        return JSONResponse(openai_error(message, 400, param=param), status_code=400)
    return JSONResponse(error_content(message, errors), status_code=422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if isinstance(exc, OpenAIError):
        content = exc.body
    else:
        content = error_content_for(request.url.path, exc.status_code, message)
    return JSONResponse(content, status_code=exc.status_code, headers=exc.headers)


async def _redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("Redis error on %s %s: %s", request.method, request.url.path, exc)
    message = f"Redis is unavailable ({type(exc).__name__}); retry shortly"
    return JSONResponse(error_content_for(request.url.path, 503, message), status_code=503)


async def _not_replicated(request: Request, exc: Exception) -> JSONResponse:
    log.warning("write not confirmed on replicas on %s %s: %s", request.method, request.url.path, exc)
    message = f"Redis could not confirm this on a replica ({exc}), so a failover could lose it: not accepted; retry"
    return JSONResponse(
        error_content_for(request.url.path, 503, message), status_code=503, headers={"Retry-After": "1"}
    )


def create_app() -> FastAPI:
    app = FastAPI(
        title="DSPy jobs",
        description="Run optimized DSPy programs as queued jobs: submit, poll, stream tokens.",
        version="0.1.0",
        lifespan=lifespan,
    )
    settings = get_settings()
    configure_logging(settings)
    # Parsed now so a malformed API_KEYS stops the API at startup instead of leaving it open.
    api_keys = parse_api_keys(settings)
    if not api_keys:
        log.warning("no API_KEYS configured: the API is open to anyone who can reach it")
    # Middleware added last runs first: CORS, then the key check, then the Redis
    # high-water mark, then the body limit, so a caller without a key, or any
    # submission while Redis is nearly full, is refused before its body is read.
    app.state.memory = MemoryGuard(settings)
    app.add_middleware(
        BodyLimitMiddleware,
        limit_for_path=lambda path: (
            settings.batch_max_bytes if BATCH_SUBMISSIONS.match(path) else settings.request_max_bytes
        ),
    )
    app.add_middleware(SubmissionGuard, guard=app.state.memory)
    app.add_middleware(AuthMiddleware, keys=api_keys, on_reject=lambda reason: REQUESTS_REFUSED.labels(reason).inc())
    if settings.cors_allow_origins:
        # Keys travel in headers, never cookies: no credentials, so a page
        # from an allowed origin must hold its own key to call the API.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=["Location", "Retry-After", "Idempotent-Replayed"],
            max_age=600,
        )
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RedisError, _redis_unavailable)
    app.add_exception_handler(NotReplicated, _not_replicated)
    catalog = Catalog(settings)
    app.state.catalog = catalog
    app.include_router(jobs.build_router(catalog))
    app.include_router(events.router)
    app.include_router(batches.build_router(catalog))
    app.include_router(programs.build_router(catalog))
    app.include_router(feedback.router)
    app.include_router(rollouts.router)
    app.include_router(replays.router)
    app.include_router(optimizations.router)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(metrics.router)
    app.include_router(page.router)
    app.include_router(openai_chat.build_router(catalog))
    app.include_router(openai_batches.build_router(catalog))
    openapi = app.openapi
    # Errors that middleware and handlers give (401, 413, 503) and their shape, in the document.
    app.openapi = lambda: document_errors(openapi(), PUBLIC_PATHS)  # type: ignore[method-assign]
    return app


app = create_app()
tune_gc()
