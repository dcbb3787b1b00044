"""The webhook sender: every worker process delivers the completion events that are due.

Deliveries are queued in Redis as jobs and batches end (core/lua/webhooks.lua).
Each worker's sender claims the due ones, a few at a time, and sends each on
the worker's event loop with its own time limit, `webhook_concurrency` at
once: a receiver that is slow or dead holds one delivery's slot for at most
`webhook_timeout_s`, never a job, and one receiver (host and port) may hold
at most a quarter of the slots, so a dead one does not hold back everyone
else's events. A claim lasts the attempt's time limit and a margin; a sender
killed mid-attempt leaves the delivery to be claimed again once that runs
out, so an event may arrive twice (the same `webhook-id`: receivers
deduplicate on it), never not at all while the window lasts.

Each attempt checks the receiver again (core/webhooks.py) and connects to the
address it checked; the receiver's answer is read for its status only and
never logged.
"""

import asyncio
import functools
import json
import logging
import time
from collections import Counter
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
from core.metrics import WEBHOOK_DELIVERIES, counter_field
from core.settings import Settings
from core.webhooks import DeliveryStatus, Target, TargetRefused, check_target, event_body, retry_delay_s, retryable

log = logging.getLogger(__name__)

POLL_S = 0.5
# How long a delivery put off for its receiver's share of the slots waits before it is claimed again.
DEFER_S = 1.0
# Beyond the attempt's own limit, before another sender may take the delivery over.
CLAIM_MARGIN_S = 10.0
ERROR_MAX_CHARS = 300


@dataclass(frozen=True)
class Answer:
    """How one attempt went: the receiver's status code (None if none came), what went wrong (None if
    nothing), and whether the receiver was refused (no use trying it again)."""

    code: int | None
    error: str | None = None
    refused: bool = False


class Attempt:
    """One claimed delivery attempt, as `webhook_claim` returned it."""

    def __init__(self, delivery: str, attempts: int, flat: list[str]) -> None:
        self.delivery = delivery
        self.attempts = attempts
        self.fields = dict(zip(flat[::2], flat[1::2], strict=True))

    @property
    def receiver(self) -> str:
        """Host and port: what one slow or dead receiver has in common."""
        return httpx.URL(self.fields["url"]).netloc.decode("ascii")

    @property
    def subject(self) -> str:
        kind, _, subject_id = self.delivery.partition(":")
        return f"{kind} {subject_id}"


class WebhookSender:
    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self._redis = client
        self._settings = settings
        secret = settings.webhook_secret
        self._signer = Webhook(secret.get_secret_value()) if secret is not None else None
        self._in_flight: set[asyncio.Task[None]] = set()
        # A receiver that hangs holds each of its attempts for the whole timeout: it may hold only its share of
        # the slots, so the others' events still go out.
        self._per_receiver = max(1, settings.webhook_concurrency // 4)
        self._by_receiver: Counter[str] = Counter()
        # Redirects are answers like any other: following one would send the event where no one checked.
        self._http = httpx.AsyncClient(follow_redirects=False, trust_env=False)

    async def run_forever(self) -> None:
        if self._signer is None:
            # Nothing can be queued: the API refuses webhook_url while WEBHOOK_SECRET is unset.
            return
        try:
            while True:
                try:
                    claimed = await self._claim()
                except RedisError as e:
                    log.warning("webhook sender could not reach Redis: %s", e)
                    claimed = 0
                if claimed == 0:
                    await asyncio.sleep(POLL_S)
        finally:
            for task in self._in_flight:
                task.cancel()
            await self._http.aclose()

    async def _claim(self) -> int:
        free = self._settings.webhook_concurrency - len(self._in_flight)
        if free <= 0:
            return 0
        now = time.time()
        lease_until = now + self._settings.webhook_timeout_s + CLAIM_MARGIN_S
        claimed = await scripts.acall(self._redis, "webhook_claim", [keys.WEBHOOKS_DUE], [now, lease_until, free])
        started = 0
        for delivery, attempts, flat in claimed:
            attempt = Attempt(str(delivery), int(attempts), flat)
            receiver = attempt.receiver
            if self._by_receiver[receiver] >= self._per_receiver:
                await scripts.acall(
                    self._redis,
                    "webhook_defer",
                    [keys.WEBHOOKS_DUE],
                    [attempt.delivery, attempt.attempts, now + DEFER_S],
                )
                continue
            self._by_receiver[receiver] += 1
            task = asyncio.create_task(self._attempt(attempt))
            self._in_flight.add(task)
            task.add_done_callback(functools.partial(self._done, receiver))
            started += 1
        return started

    def _done(self, receiver: str, task: "asyncio.Task[None]") -> None:
        self._in_flight.discard(task)
        self._by_receiver[receiver] -= 1
        if self._by_receiver[receiver] <= 0:
            del self._by_receiver[receiver]

    async def _attempt(self, attempt: Attempt) -> None:
        try:
            body = await self._body(attempt)
            if body is None:
                return
            await self._report(attempt, await self._send(attempt, body))
        except RedisError as e:
            # The claim runs out and the delivery is attempted again.
            log.warning("webhook for %s: Redis unavailable (%s); it will be attempted again", attempt.subject, e)
        except Exception:
            log.exception("webhook for %s: unexpected failure; it will be attempted again", attempt.subject)

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

    async def _send(self, attempt: Attempt, body: str) -> Answer:
        url = attempt.fields["url"]
        try:
            async with asyncio.timeout(self._settings.webhook_timeout_s):
                target = await check_target(url, self._settings)
                request = self._request(target, url, attempt.delivery, body)
                response = await self._http.send(request)
                await response.aclose()
        except TargetRefused as e:
            return Answer(None, f"refused: {e}", refused=True)
        except TimeoutError:
            return Answer(None, f"no answer within {self._settings.webhook_timeout_s:g} s")
        except httpx.HTTPError as e:
            return Answer(None, f"{type(e).__name__}: {e}"[:ERROR_MAX_CHARS])
        if 200 <= response.status_code < 300:
            return Answer(response.status_code)
        return Answer(response.status_code, f"answered {response.status_code}")

    def _request(self, target: Target, url: str, delivery: str, body: str) -> httpx.Request:
        assert self._signer is not None
        msg_id = "msg_" + delivery.replace(":", "_")
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": "dspy-jobs-webhooks",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(msg_id, now, body),
        }
        # To the address just checked, under the receiver's own name (Host, TLS SNI and certificate).
        parsed = httpx.URL(url)
        pinned = parsed.copy_with(host=target.addresses[0])
        headers["host"] = parsed.netloc.decode("ascii")
        return self._http.build_request(
            "POST",
            pinned,
            content=body.encode(),
            headers=headers,
            timeout=self._settings.webhook_timeout_s,
            extensions={"sni_hostname": target.host},
        )

    async def _report(self, attempt: Attempt, answer: Answer) -> None:
        code, error = answer.code, answer.error
        now = time.time()
        delay_s = retry_delay_s(attempt.attempts)
        window_ends = float(attempt.fields["ended_at"]) + self._settings.webhook_retry_window_s
        if error is None:
            outcome = DeliveryStatus.delivered.value
        elif answer.refused or not retryable(code) or now + delay_s > window_ends:
            outcome = DeliveryStatus.failed.value
        else:
            outcome = "retrying"
        counter = counter_field(WEBHOOK_DELIVERIES, {"outcome": outcome})
        await scripts.acall(
            self._redis,
            "webhook_report",
            [keys.WEBHOOKS_DUE, keys.METRICS_COUNTERS],
            [attempt.delivery, attempt.attempts, outcome, now + delay_s, code or "", error or "", counter],
        )
        log.log(
            logging.INFO if error is None else logging.WARNING,
            "webhook for %s to %s: attempt %d %s (%s)",
            attempt.subject,
            httpx.URL(attempt.fields["url"]).host,
            attempt.attempts,
            outcome,
            error or code,
        )
