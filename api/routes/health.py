"""`/health` (the process is alive) and `/ready` (it can do useful work)."""

import time
from typing import Any, cast

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from api.deps import RedisDep, SettingsDep
from core import keys

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: answers while the process runs, whatever its dependencies do."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "A dependency is missing; `reason` says which."}})
async def ready(redis: RedisDep, settings: SettingsDep) -> JSONResponse:
    """Readiness: Redis answers and at least one worker sent a heartbeat recently."""
    checks: dict[str, Any] = {}
    try:
        await redis.ping()
        checks["redis"] = "ok"
        since = time.time() - settings.worker_offline_after_s
        workers = cast(list[str], await redis.zrangebyscore(keys.WORKERS, since, "+inf"))
        checks["workers"] = workers
    except (RedisError, OSError) as e:
        return JSONResponse(
            {"status": "unavailable", "reason": f"Redis does not answer: {e}", "checks": {"redis": "down"}}, 503
        )
    if not workers:
        reason = f"no worker online (none sent a heartbeat in the last {settings.worker_offline_after_s:g} s)"
        return JSONResponse({"status": "unavailable", "reason": reason, "checks": checks}, 503)
    return JSONResponse({"status": "ready", "checks": checks})
