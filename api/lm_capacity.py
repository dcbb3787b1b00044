"""What each model's LM capacity looks like right now (core/capacity.py): for `GET /models` and `/metrics`."""

import time
from typing import Any, cast

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from core import keys
from core.capacity import WINDOW_S, capacity_keys, endpoints
from core.settings import Settings


class ModelLimitsPublic(BaseModel):
    max_in_flight: int = Field(description="LM calls in flight at once, from every worker together.")
    bulk_max_in_flight: int = Field(description="Of which batch items may hold at most this many.")
    rpm: int | None = Field(description="Requests per minute (null: no limit).")
    tpm: int | None = Field(description="Tokens per minute, prompt and completion (null: no limit).")


class ModelWaiting(BaseModel):
    interactive: int = Field(description="Jobs a worker holds that wait for a slot.")
    bulk: int = Field(description="Batch items of unfinished batches not started yet.")


class ModelCapacity(BaseModel):
    model: str
    api_base: str | None = Field(
        description="The endpoint's API base ('' for the provider's default); null unless the caller has an "
        "operator's key (API_ADMIN_KEYS) on an API with keys."
    )
    default: bool = Field(description="Whether this is LM_MODEL, the model jobs use unless they ask for another.")
    limits: ModelLimitsPublic
    in_flight: int = Field(description="LM calls in flight now.")
    waiting: ModelWaiting
    paused_until: float | None = Field(
        None, description="Unix time until which no call is sent (a 429, or too many failures in a row)."
    )
    pause_reason: str | None = Field(None, description="`rate_limited` or `failing`.")
    requests_last_minute: float = Field(description="Calls started in the last minute (sliding estimate).")
    tokens_last_minute: float = Field(description="Tokens charged in the last minute (sliding estimate).")
    rate_limited_total: int = Field(description="Calls the provider answered with 429.")
    failures_total: int = Field(description="Calls that failed with a server error, a timeout or a dropped connection.")
    pauses_total: int = Field(description="Times the model was paused for every worker.")


async def read_capacity(redis: aioredis.Redis, settings: Settings, bulk_waiting: dict[str, int]) -> list[ModelCapacity]:
    """Every model's capacity now; `bulk_waiting`: queued batch items by model (api/metrics.py reads them)."""
    now = time.time()
    models = endpoints(settings)
    async with redis.pipeline(transaction=False) as pipe:
        for endpoint, _ in models.values():
            slots, waiting, _, state, *minutes = capacity_keys(endpoint.id, now)
            pipe.zcount(slots, now, "+inf")
            pipe.zcount(waiting, now, "+inf")
            pipe.hgetall(state)
            pipe.mget(*minutes)
        found: list[Any] = await pipe.execute()
    elapsed = (now % WINDOW_S) / WINDOW_S
    result = []
    for i, (model, (endpoint, limits)) in enumerate(models.items()):
        in_flight, waiting_i, state, counts = found[4 * i : 4 * i + 4]
        rpm_now, rpm_before, tpm_now, tpm_before = (float(count or 0) for count in counts)
        paused_until = float(state.get("paused_until") or 0)
        result.append(
            ModelCapacity(
                model=model,
                api_base=endpoint.api_base,
                default=model == settings.lm_model,
                limits=ModelLimitsPublic(
                    max_in_flight=limits.max_in_flight,
                    bulk_max_in_flight=limits.bulk_max_in_flight,
                    rpm=limits.rpm,
                    tpm=limits.tpm,
                ),
                in_flight=int(in_flight),
                waiting=ModelWaiting(interactive=int(waiting_i), bulk=bulk_waiting.get(model, 0)),
                paused_until=paused_until if paused_until > now else None,
                pause_reason=state.get("pause_reason") if paused_until > now else None,
                requests_last_minute=round(rpm_now + rpm_before * (1 - elapsed), 1),
                tokens_last_minute=round(tpm_now + tpm_before * (1 - elapsed), 1),
                rate_limited_total=int(state.get("n_rate_limited") or 0),
                failures_total=int(state.get("n_failures") or 0),
                pauses_total=int(state.get("n_pauses") or 0),
            )
        )
    return result


async def bulk_waiting(redis: aioredis.Redis, settings: Settings) -> dict[str, int]:
    """Queued items of unfinished batches, by model."""
    batch_ids = cast(list[str], await redis.zrange(keys.OPEN_BATCHES, 0, -1))
    async with redis.pipeline(transaction=False) as pipe:
        for batch_id in batch_ids:
            pipe.hmget(keys.batch(batch_id), ["model", "n_queued"])
        rows = cast(list[list[str | None]], await pipe.execute())
    waiting: dict[str, int] = {}
    for model, queued in rows:
        if queued is not None:
            name = model or settings.lm_model
            waiting[name] = waiting.get(name, 0) + int(queued)
    return waiting
