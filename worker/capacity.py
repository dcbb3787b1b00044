"""A worker process's side of LM capacity (core/capacity.py): acquiring, releasing and renewing slots.

Callers of one process that wait for a slot wait here, on the process's
event loop, not in Redis: each asks Redis again when another caller anywhere
releases a slot of that endpoint (worker/wakeups.py), when a pause it was
told about is over, and once a second whatever happens, in case a wake-up was
missed. A caller registered as waiting holds
a lease on that registration, renewed with the slots, so a process that dies
while its callers wait does not hold bulk work back forever.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core import keys, scripts
from core.capacity import WINDOW_S, Endpoint, Limits, capacity_keys, endpoints, minute
from core.settings import Settings
from worker.wakeups import Wakeups

log = logging.getLogger(__name__)

# Ask again at least this often while waiting, wake-up or not.
_POLL_S = 1.0

# Told when a caller first has to wait: (reason, unix time the model is paused until, if it is).
OnWait = Callable[[str, float | None], Awaitable[None]]


class CapacityTimeout(Exception):
    """The caller's deadline passed while it waited for a slot."""


@dataclass
class Slot:
    """One LM call's place in its endpoint's capacity."""

    holder: str
    endpoint: Endpoint
    # Tokens charged for it when granted, and the minute they were charged to.
    estimate: int
    minute: int
    released: bool = field(default=False)


def wakeup_channels(settings: Settings) -> list[str]:
    """The channels `Capacity` waits on (for the process's `Wakeups`)."""
    return [keys.lm_freed(endpoint.id) for endpoint, _ in endpoints(settings).values()]


class Capacity:
    def __init__(self, client: aioredis.Redis, settings: Settings, wakeups: Wakeups) -> None:
        self._redis = client
        self._settings = settings
        self._models = endpoints(settings)
        self._wakeups = wakeups
        self._held: dict[str, Slot] = {}
        self._waiting: dict[str, Endpoint] = {}

    def endpoint(self, model: str | None) -> tuple[Endpoint, Limits]:
        found = self._models.get(model or self._settings.lm_model)
        if found is None:
            raise KeyError(f"model {model!r} is not one this service allows")
        return found

    @property
    def models(self) -> dict[str, tuple[Endpoint, Limits]]:
        """Every model a job may use, with its endpoint and limits."""
        return self._models

    @property
    def in_flight(self) -> int:
        """Slots this process holds now."""
        return len(self._held)

    async def acquire(
        self,
        model: str | None,
        priority: str,
        estimate: int,
        *,
        holder: str | None = None,
        deadline: Callable[[], float | None] | None = None,
        on_wait: OnWait | None = None,
    ) -> Slot:
        """A slot of `model`'s endpoint, once there is one for this caller. `deadline()`: the
        `time.monotonic()` after which it stops waiting (asked at every look: it may be learnt while waiting)."""
        endpoint, limits = self.endpoint(model)
        holder = holder or uuid.uuid4().hex
        told = False
        try:
            while True:
                now = time.time()
                found = await scripts.acall(
                    self._redis,
                    "cap_acquire",
                    capacity_keys(endpoint.id, now),
                    [
                        repr(now),
                        holder,
                        priority,
                        repr(now + self._settings.job_lease_s),
                        limits.max_in_flight,
                        limits.bulk_max_in_flight,
                        limits.rpm or 0,
                        limits.tpm or 0,
                        estimate,
                        repr((now % WINDOW_S) / WINDOW_S),
                        2 * WINDOW_S,
                    ],
                )
                if int(found[0]) == 1:
                    slot = Slot(holder, endpoint, estimate, minute(now))
                    self._held[holder] = slot
                    return slot
                self._waiting[holder] = endpoint
                reason, retry_at = _text(found[1]), float(found[2])
                if not told and on_wait is not None:
                    told = True
                    await on_wait(reason, retry_at if retry_at > now else None)
                wait_s = retry_at - now if retry_at > now else _POLL_S
                until = deadline() if deadline is not None else None
                if until is not None:
                    remaining = until - time.monotonic()
                    if remaining <= 0:
                        raise CapacityTimeout(f"no slot of {endpoint.model} before the deadline ({reason})")
                    wait_s = min(wait_s, remaining)
                await self._wakeups.wait(keys.lm_freed(endpoint.id), wait_s)
        finally:
            if self._waiting.pop(holder, None) is not None and holder not in self._held:
                with contextlib.suppress(RedisError):
                    await asyncio.shield(
                        scripts.acall(self._redis, "cap_forget", capacity_keys(endpoint.id, time.time()), [holder])
                    )

    async def release(
        self, slot: Slot, outcome: str, used_tokens: int | None = None, pause_s: float | None = None
    ) -> None:
        """Give the slot back. `outcome`: ok, failed (counts toward pausing the endpoint), rate_limited
        (pauses it for `pause_s`, or a backoff), unused (no call was made)."""
        if slot.released:
            return
        slot.released = True
        self._held.pop(slot.holder, None)
        correction = used_tokens - slot.estimate if used_tokens is not None else 0
        s = self._settings
        now = time.time()
        try:
            await scripts.acall(
                self._redis,
                "cap_release",
                capacity_keys(slot.endpoint.id, now, charged_minute=slot.minute),
                [
                    slot.holder,
                    repr(now),
                    outcome,
                    correction,
                    "" if pause_s is None else repr(float(pause_s)),
                    s.lm_breaker_failures,
                    s.retry_base_s,
                    s.retry_max_s,
                    keys.lm_freed(slot.endpoint.id),
                ],
            )
        except RedisError as e:
            # Its lease runs out instead, within job_lease_s.
            log.warning("could not release an LM slot of %s: %s", slot.endpoint.model, e)

    async def renew(self) -> None:
        """Extend the leases of every slot held and every waiting caller of this process."""
        by_endpoint: dict[str, tuple[Endpoint, list[str]]] = {}
        for slot in list(self._held.values()):
            by_endpoint.setdefault(slot.endpoint.id, (slot.endpoint, []))[1].extend(("s", slot.holder))
        for holder, endpoint in list(self._waiting.items()):
            by_endpoint.setdefault(endpoint.id, (endpoint, []))[1].extend(("w", holder))
        if not by_endpoint:
            return
        now = time.time()
        expiry = repr(now + self._settings.job_lease_s)
        calls: list[scripts.Call] = [
            ("cap_renew", capacity_keys(endpoint_id, now), [expiry, *pairs])
            for endpoint_id, (_, pairs) in by_endpoint.items()
        ]
        results = await scripts.apipeline(self._redis, calls)
        for (endpoint, _), result in zip(by_endpoint.values(), results, strict=True):
            if isinstance(result, Exception):
                log.warning("could not renew LM slots of %s: %s", endpoint.model, result)
            elif result:
                log.warning("%d LM slot(s) of %s outlived their lease (a stall?)", len(result), endpoint.model)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
