"""Checking a webhook delivery before acting on it.

The service signs each completion event per Standard Webhooks (headers
`webhook-id`, `webhook-timestamp`, `webhook-signature`; secret
`whsec_<base64>`). `verify_webhook` is a thin layer over the
`standardwebhooks` package that turns each way a delivery can be wrong
(a bad or missing signature, a timestamp more than five minutes off, a
body that is not an event) into one `WebhookVerificationError`.

Deliveries are retried until the receiver answers 2xx, so one event may
arrive more than once: every attempt has the same `webhook-id`
(`WebhookEvent.id`), which is what to deduplicate on.
"""

import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import standardwebhooks

from dspy_jobs_client.errors import WebhookVerificationError
from dspy_jobs_client.records import BatchRecord, JobRecord


@dataclass(frozen=True)
class WebhookEvent:
    id: str  # the `webhook-id` header: the same for every attempt at delivering this event
    type: str  # job.succeeded, job.failed, job.cancelled, job.expired, batch.completed, batch.cancelled, ...
    timestamp: datetime  # when the job or batch ended
    data: dict[str, Any]  # the record, as GET /jobs/{id} or GET /batches/{id} returns it

    @property
    def job(self) -> JobRecord | None:
        """The job, for a `job.*` event."""
        return JobRecord.from_json(self.data) if self.type.startswith("job.") else None

    @property
    def batch(self) -> BatchRecord | None:
        """The batch, for a `batch.*` event."""
        return BatchRecord.from_json(self.data) if self.type.startswith("batch.") else None


def _webhook(secret: str | bytes) -> standardwebhooks.Webhook:
    try:
        return standardwebhooks.Webhook(secret)
    except (standardwebhooks.webhooks.EmptyWebhookSecretError, binascii.Error) as e:
        # The receiver's configuration is wrong, not the delivery: not a WebhookVerificationError.
        raise ValueError(f"the webhook secret is not a Standard Webhooks secret (whsec_<base64>): {e}") from e


def verify_webhook(headers: Mapping[str, str], body: bytes | str, secret: str | bytes) -> WebhookEvent:
    """The event in a delivery whose signature checks out with `secret`, else `WebhookVerificationError`.

    `body` must be the raw request body, byte for byte: a re-serialized JSON
    object no longer matches its signature. A malformed `secret` is a
    `ValueError`.
    """
    webhook = _webhook(secret)
    try:
        payload = webhook.verify(body, dict(headers))
    # standardwebhooks lets a malformed header or body through as ValueError (binascii.Error, JSONDecodeError,
    # UnicodeDecodeError and an unpacking error are all ValueErrors).
    except (standardwebhooks.webhooks.WebhookVerificationError, ValueError) as e:
        raise WebhookVerificationError(f"webhook rejected: {e}") from e
    try:
        return WebhookEvent(
            id={name.lower(): value for name, value in headers.items()}["webhook-id"],
            type=str(payload["type"]),
            timestamp=datetime.fromisoformat(payload["timestamp"]),
            data=dict(payload["data"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise WebhookVerificationError(f"webhook signed, but not a dspy-jobs event: {e!r}") from e
