"""`/health` (the process is alive) and `/ready` (it can do useful work, and what it depends on)."""

import asyncio
import time
import urllib.error
import urllib.request
from typing import Any, cast

import redis.asyncio as aioredis
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from api.auth import UNAUTHORIZED, CallerDep
from api.deps import RedisDep, SettingsDep
from api.webhook_senders import sender_states
from core import keys
from core.settings import Settings

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: answers while the process runs, whatever its dependencies do. Needs no API key."""
    return {"status": "ok"}


def _get_models(settings: Settings) -> dict[str, Any]:
    url = f"{str(settings.lm_api_base).rstrip('/')}/models"
    request = urllib.request.Request(url, method="GET")
    if settings.lm_api_key is not None:
        request.add_header("Authorization", f"Bearer {settings.lm_api_key.get_secret_value()}")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=settings.ready_lm_timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    except urllib.error.URLError as e:
        return {"status": "down", "url": url, "reason": str(e.reason)}
    except (OSError, ValueError) as e:  # a timeout while reading, a malformed URL
        return {"status": "down", "url": url, "reason": str(e) or type(e).__name__}
    latency_ms = round((time.monotonic() - started) * 1000, 1)
    if 200 <= status < 300:
        return {"status": "ok", "url": url, "latency_ms": latency_ms}
    return {"status": "down", "url": url, "reason": f"HTTP {status}", "latency_ms": latency_ms}


async def _check_lm(settings: Settings) -> dict[str, Any]:
    """Reported, never fatal: jobs queue up and retry while the LM is away, and a hosted
    provider's default endpoint (`LM_API_BASE` empty) is not ours to probe."""
    if not settings.lm_api_base:
        return {"status": "not checked", "reason": f"{settings.lm_model} at the provider's default endpoint"}
    # urllib in a thread: a blocking probe, kept off the event loop.
    return await asyncio.to_thread(_get_models, settings)


@router.get(
    "/ready",
    responses={503: {"description": "A dependency is missing; `reason` says which."}, **UNAUTHORIZED},
)
async def ready(redis: RedisDep, settings: SettingsDep, caller: CallerDep) -> JSONResponse:
    """Readiness: Redis answers and at least one worker sent a heartbeat recently. Also reports the
    workers on each queue, each one's webhook sender, and whether the LM endpoint answers (informational:
    never a 503 by itself). With API keys configured, only an operator's key (API_ADMIN_KEYS) sees worker
    names and the LM's URL; other keys see counts and statuses."""
    body, status = await _readiness(redis, settings)
    return JSONResponse(body if caller.admin else _summary(body), status)


async def _readiness(redis: aioredis.Redis, settings: Settings) -> tuple[dict[str, Any], int]:
    checks: dict[str, Any] = {}
    lm = asyncio.create_task(_check_lm(settings))
    try:
        await redis.ping()
        checks["redis"] = "ok"
        since = time.time() - settings.worker_offline_after_s
        workers = cast(list[str], await redis.zrangebyscore(keys.WORKERS, since, "+inf"))
        async with redis.pipeline(transaction=False) as pipe:
            for name in workers:
                pipe.hget(keys.worker(name), "queues")
            listed = cast(list[str | None], await pipe.execute())
        senders = await sender_states(redis, settings, workers)
    except (RedisError, OSError) as e:
        lm.cancel()
        return {"status": "unavailable", "reason": f"Redis does not answer: {e}", "checks": {"redis": "down"}}, 503
    checks["workers"] = workers
    queues: dict[str, list[str]] = {settings.interactive_queue: [], settings.bulk_queue: []}
    for name, names in zip(workers, listed, strict=True):
        for queue in (names or "").split(","):
            if queue:
                queues.setdefault(queue, []).append(name)
    checks["queues"] = {queue: {"workers": names} for queue, names in queues.items()}
    checks["webhooks"] = senders
    checks["lm"] = await lm
    if not workers:
        reason = f"no worker online (none sent a heartbeat in the last {settings.worker_offline_after_s:g} s)"
        return {"status": "unavailable", "reason": reason, "checks": checks}, 503
    warnings = [f"no worker consumes the {queue} queue" for queue, names in queues.items() if not names]
    warnings += [f"the webhook sender of {name} is stalled" for name, w in senders.items() if w["status"] == "stalled"]
    if checks["lm"]["status"] == "down":
        warnings.append(f"the LM at {checks['lm']['url']} does not answer ({checks['lm']['reason']})")
    return {"status": "ready", "checks": checks, "warnings": warnings}, 200


def _summary(body: dict[str, Any]) -> dict[str, Any]:
    """What any key may see of readiness: statuses and counts, no host names, URLs or error texts."""
    checks = body["checks"]
    summary: dict[str, Any] = {"redis": checks["redis"]}
    if "workers" in checks:
        summary["workers"] = len(checks["workers"])
        summary["queues"] = {queue: {"workers": len(q["workers"])} for queue, q in checks["queues"].items()}
        summary["lm"] = {"status": checks["lm"]["status"]}
        senders = [sender["status"] for sender in checks["webhooks"].values()]
        summary["webhooks"] = {status: senders.count(status) for status in sorted(set(senders))}
    public: dict[str, Any] = {"status": body["status"], "checks": summary}
    if body["status"] != "ready":
        public["reason"] = "Redis does not answer" if checks["redis"] != "ok" else "no worker online"
    else:
        public["warnings"] = [w for w in body["warnings"] if w.startswith("no worker consumes")]
        if summary["webhooks"].get("stalled"):
            public["warnings"].append(f"{summary['webhooks']['stalled']} webhook sender(s) stalled")
        if summary["lm"]["status"] == "down":
            public["warnings"].append("the LM does not answer")
    return public
