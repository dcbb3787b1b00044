"""Completion webhooks: which receivers are accepted, what a record says of its delivery, when to try again.

A job or batch submitted with `webhook_url` gets one event when it ends:
`{"type": "job.succeeded", "timestamp": ..., "data": <the record>}`, signed
per Standard Webhooks (worker/webhooks.py sends it). The delivery is queued
in the same Redis step as the terminal event (core/lua/webhooks.lua), so an
ended job always has its delivery, and it is durable work the workers
consume, retried until `webhook_retry_window_s` after the first attempt.

Receivers are a server-side request forgery risk: a caller could name an
address only the service can reach (a metadata endpoint, an internal admin
port). By default a receiver must be https on addresses that are all
public (the table of core/special_addresses.py); the API checks that at
submit time and the worker again at each attempt, both with the sender's
own URL parser (core/webhook_url.py), and the worker connects to the very
address it checked, so a name that resolves differently later (DNS
rebinding) does not slip through.
"""

import base64
import binascii
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from core.resolver import NotResolved
from core.special_addresses import non_public
from core.webhook_url import ReceiverURL, TargetRefused, parse_receiver_url

if TYPE_CHECKING:  # the settings validate the secret with `secret_problem`
    from core.settings import Settings

SECRET_PREFIX = "whsec_"
SECRET_MIN_BYTES = 24
# What a worker's heartbeat says of its webhook sender (worker/webhooks.py), read by /ready and /metrics:
# when its loop last went round (unix time) and how often it was restarted. Absent: the worker runs none.
SENDER_WENT_ROUND_AT = "webhooks_went_round_at"
SENDER_RESTARTS = "webhooks_restarts"
# Backoff between attempts: doubling from the first, at most the last, each
# drawn between half and all of it so receivers that failed together are not
# hit again together.
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 300.0


def secret_problem(secret: str) -> str | None:
    """What is wrong with a signing secret (`whsec_` + base64 of its bytes), or None."""
    if not secret.startswith(SECRET_PREFIX):
        return f"it must start with {SECRET_PREFIX!r}"
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        return f"what follows {SECRET_PREFIX!r} must be base64"
    if len(key) < SECRET_MIN_BYTES:
        return f"it holds {len(key)} bytes; at least {SECRET_MIN_BYTES} are needed"
    return None


class DeliveryStatus(StrEnum):
    pending = "pending"  # not yet delivered; attempts go on within the retry window
    delivered = "delivered"  # a receiver answered 2xx
    failed = "failed"  # given up: window over, 410 Gone, or the receiver is no longer allowed


class WebhookState(BaseModel):
    """The record's `webhook`: how its completion event's delivery stands."""

    url: str
    status: DeliveryStatus
    attempts: int = Field(0, description="Attempts started so far.")
    last_status_code: int | None = Field(None, description="HTTP status of the last answer, if one came.")
    last_error: str | None = Field(None, description="Why the last attempt failed, if it did.")


def webhook_from_fields(fields: dict[str, str]) -> WebhookState | None:
    if not fields.get("webhook_url"):
        return None
    code = fields.get("webhook_code")
    return WebhookState(
        url=fields["webhook_url"],
        status=DeliveryStatus(fields.get("webhook_status") or DeliveryStatus.pending.value),
        attempts=int(fields.get("webhook_attempts") or 0),
        last_status_code=int(code) if code else None,
        last_error=fields.get("webhook_error") or None,
    )


def submitted_fields(url: str) -> dict[str, str]:
    """What a record holds from its submission on, for a job or batch with a receiver."""
    return {"webhook_url": url, "webhook_status": DeliveryStatus.pending.value}


@dataclass(frozen=True)
class Target:
    """A receiver, checked: its URL's parts and the addresses it may be reached at."""

    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


Resolver = Callable[[str, int], Awaitable[list[str]]]


def _opened(receiver: ReceiverURL, settings: "Settings") -> bool:
    return settings.webhook_allow_private or bool(
        receiver.names & {h.lower().strip("[]") for h in settings.webhook_allowed_hosts}
    )


async def check_target(url: str, settings: "Settings", resolver: Resolver) -> Target:
    """The receiver at `url` if the settings allow it, else `TargetRefused` (`NotResolved` if its host did not
    resolve)."""
    receiver = parse_receiver_url(url)
    opened = _opened(receiver, settings)
    if receiver.scheme == "http" and not opened:
        raise TargetRefused(
            "webhook_url must be https (plain http only for hosts opened by WEBHOOK_ALLOW_PRIVATE or "
            "WEBHOOK_ALLOWED_HOSTS)"
        )
    host = receiver.host
    addresses = await resolver(host, receiver.port)
    if not addresses:
        raise NotResolved(f"webhook_url host {host!r} does not resolve")
    if not opened:
        for address in addresses:
            refused = non_public(address)
            if refused is not None:
                raise TargetRefused(
                    f"webhook_url host {host!r} resolves to {address}, {refused.describe()}; receivers must be "
                    "public unless WEBHOOK_ALLOW_PRIVATE or WEBHOOK_ALLOWED_HOSTS opens them"
                )
    return Target(receiver.scheme, host, receiver.port, tuple(addresses))


def event_type(kind: str, status: str) -> str:
    """`job.succeeded`, `batch.completed`, ...: what ended, and how."""
    return f"{kind}.{status}"


def event_body(event: str, ended_at_s: float, record: dict[str, Any]) -> str:
    """The event as sent; built once per delivery, so every attempt signs the same bytes."""
    timestamp = datetime.fromtimestamp(ended_at_s, UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": event, "timestamp": timestamp, "data": record}, separators=(",", ":"))


def retry_delay_s(attempts: int, draw: Callable[[], float] = random.random) -> float:
    """Seconds before the next attempt, after `attempts` failed ones."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(attempts - 1, 0))
    return ceiling * (0.5 + 0.5 * draw())


def retryable(status_code: int | None) -> bool:
    """Whether an attempt that got this answer (None: none came) is tried again: all but 2xx and 410 Gone."""
    return status_code is None or not (200 <= status_code < 300 or status_code == 410)
