"""The webhook sender: every worker process delivers the completion events that are due.

Deliveries are queued in Redis as jobs and batches end (core/lua/webhooks.lua).
Each worker's sender claims the due ones, a few at a time, and sends each on
the worker's event loop with its own time limit, `webhook_concurrency` at
once: a receiver that is slow or dead holds one delivery's slot for at most
`webhook_timeout_s`, never a job. No API key and no receiver (its registrable
domain: worker/webhook_shares.py) may hold more than its share of the slots,
so one caller's slow receivers do not hold back everyone else's events. A
claim lasts the attempt's time limit and a margin; a sender killed
mid-attempt leaves the delivery to be claimed again once that runs out, so an
event may arrive twice (the same `webhook-id`: receivers deduplicate on it),
never not at all while the window lasts.

Whatever one delivery holds cannot stop the others: its URL is parsed by the
parser the API checked it with (core/webhook_url.py), and anything an
attempt raises is that attempt's failure, logged with the delivery's id and
reported. An attempt that crashes (raises, or its worker dies) counts: after
`CRASHES_MAX` of them the delivery ends `failed`, and every delivery ends by
its retry window, which the claim itself enforces. The sender runs
supervised (worker/supervisor.py): restarted if it ends anyway.

Each attempt checks the receiver again (core/webhooks.py), resolving its name
on threads of its own within a time limit (core/resolver.py), and connects to
the address it checked. Of the answer only the status line and headers are
read: the body is never read (so never decompressed) and the connection is
closed; nothing of it is logged.
"""

import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from standardwebhooks.webhooks import Webhook

from core import keys, scripts
from core.batches import batch_from_fields
from core.jobs import JobLinks, job_from_fields
from core.metrics import LOOP_RESTARTS, WEBHOOK_DELIVERIES, counter_field
from core.resolver import NotResolved, Resolver
from core.settings import Settings
from core.webhook_url import ReceiverURL, TargetRefused, parse_receiver_url
from core.webhooks import (
    SENDER_RESTARTS,
    SENDER_WENT_ROUND_AT,
    DeliveryStatus,
    Target,
    check_target,
    event_body,
    retry_delay_s,
    retryable,
)
from worker.supervisor import Liveness, supervise
from worker.webhook_shares import Shares, Slot, receiver_of

log = logging.getLogger(__name__)

POLL_S = 0.5
# How long a delivery put off for its key's or receiver's share of the slots waits before it is claimed again.
DEFER_S = 1.0
# Beyond the attempt's own limit, before another sender may take the delivery over.
CLAIM_MARGIN_S = 10.0
ERROR_MAX_CHARS = 300
# Crashed attempts (the sender raised, or its worker died, mid-attempt) after which a delivery ends `failed`:
# one that kills its worker every time must not take down the next one, and the next.
CRASHES_MAX = 3
# How long a delivery's hash outlives its retry window: a sender ends it, on its record too, before Redis forgets it.
EXPIRY_GRACE_S = 3600


@dataclass(frozen=True)
class Answer:
    """How one attempt went: the receiver's status code (None if none came), what went wrong (None if
    nothing), whether the receiver was refused (no use trying it again), whether our own code failed."""

    code: int | None
    error: str | None = None
    refused: bool = False
    crashed: bool = False


class Attempt:
    """One claimed delivery attempt, as `webhook_claim` returned it."""

    def __init__(self, delivery: str, attempts: int, flat: list[str]) -> None:
        self.delivery = delivery
        self.attempts = attempts
        self.fields = dict(zip(flat[::2], flat[1::2], strict=True))

    @property
    def crashes(self) -> int:
        return int(self.fields.get("crashes") or 0)


async def run_sender(client: aioredis.Redis, settings: Settings, liveness: Liveness) -> None:
    """The sender, forever: a new one whenever one ends, each restart counted in /metrics."""

    async def count_restart() -> None:
        await client.hincrby(keys.METRICS_COUNTERS, counter_field(LOOP_RESTARTS, {"loop": "webhooks"}), 1)

    await supervise(
        "webhook sender", lambda: WebhookSender(client, settings, liveness).run_forever(), liveness, count_restart
    )


def sender_liveness(liveness: Liveness | None) -> dict[str, str]:
    """What the worker's heartbeat says of its sender (nothing when it runs none)."""
    if liveness is None:
        return {}
    return {SENDER_WENT_ROUND_AT: f"{liveness.went_round_at:.3f}", SENDER_RESTARTS: str(liveness.restarts)}


class WebhookSender:
    """One run of the sender: what it holds (the HTTP client, the resolver's threads) ends with it."""

    def __init__(self, client: aioredis.Redis, settings: Settings, liveness: Liveness) -> None:
        assert settings.webhook_secret is not None, "without WEBHOOK_SECRET nothing is queued: start no sender"
        self._redis = client
        self._settings = settings
        self._liveness = liveness
        self._signer = Webhook(settings.webhook_secret.get_secret_value())
        self._in_flight: set[asyncio.Task[None]] = set()
        slots = settings.webhook_concurrency
        self._shares = Shares(
            settings.webhook_key_max_in_flight or max(1, slots // 2),
            settings.webhook_receiver_max_in_flight or max(1, slots // 4),
        )
        self._resolver = Resolver(settings.webhook_dns_threads, settings.webhook_dns_timeout_s)
        # Redirects are answers like any other: following one would send the event where no one checked.
        # No connection is kept: one to an address checked for another name would skip that name's TLS check.
        self._http = httpx.AsyncClient(
            follow_redirects=False, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def run_forever(self) -> None:
        try:
            while True:
                self._liveness.went_round()
                try:
                    progressed = await self._claim()
                except RedisError as e:
                    log.warning("webhook sender could not reach Redis: %s", e)
                    progressed = 0
                if progressed == 0:
                    await asyncio.sleep(POLL_S)
        finally:
            for task in self._in_flight:
                task.cancel()
            await self._http.aclose()
            self._resolver.close()

    async def _claim(self) -> int:
        """Claims what is due and starts what its shares allow; how many it started or ended."""
        s = self._settings
        free = s.webhook_concurrency - len(self._in_flight)
        if free <= 0:
            return 0
        now = time.time()
        claimed = await scripts.acall(
            self._redis,
            "webhook_claim",
            [keys.WEBHOOKS_DUE, keys.METRICS_COUNTERS],
            [
                now,
                now + s.webhook_timeout_s + CLAIM_MARGIN_S,
                free,
                s.webhook_retry_window_s,
                CRASHES_MAX,
                EXPIRY_GRACE_S,
                counter_field(WEBHOOK_DELIVERIES, {"outcome": DeliveryStatus.failed.value}),
            ],
        )
        progressed = 0
        for delivery, attempts, flat in claimed:
            attempt = Attempt(str(delivery), int(attempts), flat)
            try:
                progressed += await self._start(attempt, now)
            except Exception:
                # Its claim runs out and the next one counts this attempt as crashed; the others go on.
                log.exception("webhook %s: attempt %d could not start", attempt.delivery, attempt.attempts)
        return progressed

    async def _start(self, attempt: Attempt, now: float) -> int:
        try:
            receiver = parse_receiver_url(attempt.fields["url"])
        except TargetRefused as e:
            await self._report(attempt, Answer(None, f"refused: {e}", refused=True), "?")
            return 1
        slot = Slot(attempt.fields.get("owner", ""), receiver_of(receiver.host))
        if not self._shares.take(slot):
            await scripts.acall(
                self._redis,
                "webhook_defer",
                [keys.WEBHOOKS_DUE],
                [attempt.delivery, attempt.attempts, now + DEFER_S],
            )
            return 0
        task = asyncio.create_task(self._attempt(attempt, receiver))
        self._in_flight.add(task)
        task.add_done_callback(functools.partial(self._done, slot))
        return 1

    def _done(self, slot: Slot, task: "asyncio.Task[None]") -> None:
        self._in_flight.discard(task)
        self._shares.give_back(slot)

    async def _attempt(self, attempt: Attempt, receiver: ReceiverURL) -> None:
        try:
            body = await self._body(attempt)
            if body is None:
                return
            answer = await self._send(attempt, receiver, body)
        except RedisError as e:
            # The claim runs out and the delivery is attempted again.
            log.warning("webhook %s: Redis unavailable (%s); it will be attempted again", attempt.delivery, e)
            return
        except Exception as e:
            log.exception("webhook %s: attempt %d failed in the sender", attempt.delivery, attempt.attempts)
            answer = Answer(None, f"the sender failed: {type(e).__name__}: {e}"[:ERROR_MAX_CHARS], crashed=True)
        try:
            await self._report(attempt, answer, receiver.host)
        except Exception:
            log.exception("webhook %s: attempt %d could not be reported", attempt.delivery, attempt.attempts)

    async def _body(self, attempt: Attempt) -> str | None:
        if "body" in attempt.fields:
            return attempt.fields["body"]
        raw = cast(dict[str, str], await self._redis.hgetall(attempt.fields["record"]))
        record: dict[str, Any] | None = None
        if raw:
            public = (
                job_from_fields(raw, JobLinks.for_job(raw["id"]))
                if attempt.fields["kind"] == "job"
                else batch_from_fields(raw)
            )
            record = json.loads(public.model_dump_json())
        body = event_body(attempt.fields["type"], float(attempt.fields["ended_at"]), record or {})
        stored = await scripts.acall(self._redis, "webhook_body", [], [attempt.delivery, body])
        return str(stored) if stored else None

    async def _send(self, attempt: Attempt, receiver: ReceiverURL, body: str) -> Answer:
        timeout_s = self._settings.webhook_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                target = await check_target(attempt.fields["url"], self._settings, self._resolver)
                request = self._request(receiver, target, attempt.delivery, body)
                # Streamed, and closed unread: only the status is wanted, and a body read whole is a body
                # decompressed whole (a few hundred KB of gzip is gigabytes of zeros).
                response = await self._http.send(request, stream=True)
                await response.aclose()
        except NotResolved as e:
            return Answer(None, str(e)[:ERROR_MAX_CHARS])
        except TargetRefused as e:
            return Answer(None, f"refused: {e}"[:ERROR_MAX_CHARS], refused=True)
        except TimeoutError:
            return Answer(None, f"no answer within {timeout_s:g} s")
        except httpx.HTTPError as e:
            return Answer(None, f"{type(e).__name__}: {e}"[:ERROR_MAX_CHARS])
        if 200 <= response.status_code < 300:
            return Answer(response.status_code)
        return Answer(response.status_code, f"answered {response.status_code}")

    def _request(self, receiver: ReceiverURL, target: Target, delivery: str, body: str) -> httpx.Request:
        msg_id = "msg_" + delivery.replace(":", "_")
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": "dspy-jobs-webhooks",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(msg_id, now, body),
            # To the address just checked, under the receiver's own name (Host, TLS SNI and certificate).
            "host": receiver.host_header,
        }
        return self._http.build_request(
            "POST",
            receiver.pinned(target.addresses[0]),
            content=body.encode(),
            headers=headers,
            timeout=self._settings.webhook_timeout_s,
            extensions={"sni_hostname": receiver.host},
        )

    async def _report(self, attempt: Attempt, answer: Answer, host: str) -> None:
        code, error = answer.code, answer.error
        now = time.time()
        delay_s = retry_delay_s(attempt.attempts)
        window_ends = float(attempt.fields["ended_at"]) + self._settings.webhook_retry_window_s
        if error is None:
            outcome = DeliveryStatus.delivered.value
        elif (
            answer.refused
            or not retryable(code)
            or now + delay_s > window_ends
            or (answer.crashed and attempt.crashes + 1 >= CRASHES_MAX)
        ):
            outcome = DeliveryStatus.failed.value
        else:
            outcome = "retrying"
        counter = counter_field(WEBHOOK_DELIVERIES, {"outcome": outcome})
        await scripts.acall(
            self._redis,
            "webhook_report",
            [keys.WEBHOOKS_DUE, keys.METRICS_COUNTERS],
            [
                attempt.delivery,
                attempt.attempts,
                outcome,
                now + delay_s,
                code or "",
                error or "",
                counter,
                int(answer.crashed),
            ],
        )
        log.log(
            logging.INFO if error is None else logging.WARNING,
            "webhook %s to %s: attempt %d %s (%s)",
            attempt.delivery,
            host,
            attempt.attempts,
            outcome,
            error or code,
        )
