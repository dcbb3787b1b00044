"""LM capacity: how many calls each LM endpoint may have in flight, and who gets the next one.

The LM, not our CPU, is what runs out: a local llama.cpp server decodes a
few sequences at a time (its slots), a hosted provider allows so many requests and tokens a
minute. So capacity is a property of the endpoint (model + API base), shared
by every worker process on every machine, and it lives in Redis
(`core/lua/capacity.lua`):

- **Slots.** A caller holds one slot per LM call in flight, leased like a job
  (renewed while the call runs), so a worker that dies holding slots gives
  them back when the lease runs out. At most `max_in_flight` slots are held.
- **Interactive first.** While any interactive caller waits, no bulk caller
  gets a slot, and bulk never takes the share `lm_interactive_reserve` of
  the slots, rounded down but at least one of two or more: an interactive
  job finds a slot free while a batch runs. On an endpoint with one slot an
  interactive job waits at most for the call in progress.
- **Requests and tokens per minute**, when set: a sliding-window counter
  per minute, charged when a slot is granted (tokens estimated from the
  prompt and `lm_max_tokens`) and corrected with the usage the call reports.
- **The provider's signals are everyone's.** A 429 pauses the endpoint for
  every worker for its `Retry-After` (or a backoff); `lm_breaker_failures`
  failed calls in a row (5xx, timeouts, dropped connections) pause it the
  same way. After a pause one call goes first, and the rest follow once it
  succeeds. A call refused for a 429 gives its slot back and waits for a new
  one without spending an attempt of its job.

Waiting for a slot is not an LM failure: no LM timeout runs and no attempt
is spent while a caller waits. The API reads the same keys for `GET /models`
and `/metrics`.
"""

import hashlib
import math
from dataclasses import dataclass

from core import keys
from core.settings import EMBEDDED_LM_MODEL, Settings

# The embedded model's default is its server's slots (EMBEDDED_LM_SLOTS): more in flight would only queue
# inside the server, where LM_TIMEOUT_S runs. Any other endpoint: enough that a worker is never what holds the LM back;
# a provider that cannot take as many answers 429 and pauses everyone.
DEFAULT_MAX_IN_FLIGHT = 1024

PRIORITIES = ("interactive", "bulk")
# Requests and tokens are counted per minute.
WINDOW_S = 60


@dataclass(frozen=True)
class Endpoint:
    model: str
    api_base: str

    @property
    def id(self) -> str:
        """Short and stable, for key names: the same model at another API base is another endpoint."""
        return hashlib.sha1(f"{self.model}\n{self.api_base}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Limits:
    max_in_flight: int
    rpm: int | None
    tpm: int | None
    # What bulk may hold: max_in_flight less the interactive reserve.
    bulk_max_in_flight: int


def endpoint_for(settings: Settings, model: str | None = None) -> Endpoint:
    return Endpoint(model or settings.lm_model, settings.lm_api_base or "")


def limits_for(settings: Settings, model: str | None = None) -> Limits:
    model = model or settings.lm_model
    own = settings.lm_limits.get(model)
    default = settings.lm_model == model
    max_in_flight = (own.max_in_flight if own else None) or (settings.lm_max_in_flight if default else None)
    if max_in_flight is None:
        # By name, wherever it is served (compose serves it from another host): only our embedded server
        # answers to it.
        max_in_flight = settings.embedded_lm_slots if model == EMBEDDED_LM_MODEL else DEFAULT_MAX_IN_FLIGHT
    rpm = (own.rpm if own else None) or (settings.lm_rpm if default else None)
    tpm = (own.tpm if own else None) or (settings.lm_tpm if default else None)
    reserved = reserved_for_interactive(max_in_flight, settings.lm_interactive_reserve)
    return Limits(max_in_flight, rpm, tpm, max_in_flight - reserved)


def reserved_for_interactive(max_in_flight: int, share: float) -> int:
    """The slots bulk leaves free: `share` of them rounded down, but one at least of two or more (a batch on the
    embedded model's 4 slots would otherwise take all 4, and an interactive job wait for one to finish)."""
    if share <= 0 or max_in_flight < 2:
        return 0
    return max(1, math.floor(max_in_flight * share))


def endpoints(settings: Settings) -> dict[str, tuple[Endpoint, Limits]]:
    """Every model a job may use, with its endpoint and limits."""
    return {model: (endpoint_for(settings, model), limits_for(settings, model)) for model in settings.allowed_models}


def minute(now: float) -> int:
    return int(now // WINDOW_S)


def capacity_keys(endpoint_id: str, now: float, charged_minute: int | None = None) -> list[str]:
    """The KEYS of the capacity functions: slots, waiters, state, then this and the previous minute's
    request and token counters (`charged_minute`: the minute a call's tokens were charged to)."""
    this = minute(now) if charged_minute is None else charged_minute
    return [
        keys.lm_slots(endpoint_id),
        keys.lm_waiting(endpoint_id, "interactive"),
        keys.lm_waiting(endpoint_id, "bulk"),
        keys.lm_state(endpoint_id),
        keys.lm_minute(endpoint_id, "rpm", this),
        keys.lm_minute(endpoint_id, "rpm", this - 1),
        keys.lm_minute(endpoint_id, "tpm", this),
        keys.lm_minute(endpoint_id, "tpm", this - 1),
    ]
