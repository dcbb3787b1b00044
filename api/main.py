"""The FastAPI app: thin by design. It never imports dspy.

It stores the job record, enqueues the task by name, and reads records and
event logs back. Any Redis failure becomes a 503 with a reason instead of a
hang or a stack trace.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from api.body_limit import BodyLimitMiddleware
from api.event_hub import EventHub
from api.routes import batches, events, health, jobs, page
from core.queue import make_celery
from core.settings import get_settings

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    # A blocking pool: a burst of requests waits briefly for a connection
    # instead of failing with "Too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.api_redis_max_connections,
        timeout=settings.api_redis_pool_timeout_s,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
    )
    redis = aioredis.Redis(connection_pool=pool)
    app.state.redis = redis
    app.state.celery = make_celery(settings)
    app.state.hub = EventHub(redis)
    await app.state.hub.start()
    try:
        yield
    finally:
        await app.state.hub.stop()
        await redis.aclose()


def _field_name(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    message = "; ".join(f"{_field_name(tuple(e['loc']))}: {e['msg']}" for e in errors)
    return JSONResponse({"detail": jsonable_encoder(errors), "message": message}, status_code=422)


async def _redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("Redis error on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": f"Redis is unavailable ({type(exc).__name__}); retry shortly"}, status_code=503)


def create_app() -> FastAPI:
    app = FastAPI(
        title="DSPy jobs",
        description="Run optimized DSPy programs as queued jobs: submit, poll, stream tokens.",
        version="0.1.0",
        lifespan=lifespan,
    )
    settings = get_settings()
    app.add_middleware(
        BodyLimitMiddleware,
        limit_for_path=lambda path: (
            settings.batch_max_bytes if path.startswith("/batches") else settings.request_max_bytes
        ),
    )
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RedisError, _redis_unavailable)
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(batches.router)
    app.include_router(health.router)
    app.include_router(page.router)
    return app


app = create_app()
