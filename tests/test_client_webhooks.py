"""`verify_webhook` against deliveries signed by the `standardwebhooks` package itself (no processes)."""

import base64
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dspy_jobs_client import BatchStatus, JobStatus, WebhookVerificationError, verify_webhook
from standardwebhooks import Webhook

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()

JOB = {
    "id": "4f0c9a",
    "program": "qa",
    "program_version": "1",
    "status": "succeeded",
    "input": {"question": "What is 2 plus 2?"},
    "stream": True,
    "created_at": "2026-12-01T23:00:00Z",
    "started_at": "2026-12-01T23:00:01Z",
    "finished_at": "2026-12-01T23:00:02Z",
    "attempts": 1,
    "result": {"answer": "4", "key_concepts": ["arithmetic"], "question_type": "factual"},
    "usage": {"prompt_tokens": 800, "completion_tokens": 50, "total_tokens": 850},
    "links": {"self": "/jobs/4f0c9a", "events": "/jobs/4f0c9a/events"},
}
BATCH = {
    "id": "b7e1",
    "program": "qa",
    "status": "completed",
    "counts": {"total": 2, "queued": 0, "running": 0, "succeeded": 2, "failed": 0, "cancelled": 0, "expired": 0},
    "created_at": "2026-12-01T23:00:00Z",
    "finished_at": "2026-12-01T23:05:00Z",
    "usage": {"prompt_tokens": 1600, "completion_tokens": 100, "total_tokens": 1700},
    "links": {"self": "/batches/b7e1", "results": "/batches/b7e1/results", "events": "/batches/b7e1/events"},
}


def body_of(event_type: str, data: dict[str, Any]) -> str:
    return json.dumps({"type": event_type, "timestamp": "2026-12-01T23:00:02Z", "data": data}, separators=(",", ":"))


def signed(body: str, secret: str = SECRET, msg_id: str = "msg_1", at: datetime | None = None) -> dict[str, str]:
    at = at or datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
    }


def test_a_signed_job_event_reads_back_as_the_event_with_its_typed_record() -> None:
    body = body_of("job.succeeded", JOB)

    event = verify_webhook(signed(body, msg_id="msg_job"), body.encode(), SECRET)

    assert event.id == "msg_job"
    assert event.type == "job.succeeded"
    assert event.timestamp == datetime(2026, 12, 1, 23, 0, 2, tzinfo=UTC)
    assert event.data == JOB
    assert event.batch is None
    job = event.job
    assert job is not None
    assert job.status is JobStatus.succeeded
    assert job.result == JOB["result"]
    assert job.usage is not None and job.usage.total_tokens == 850


def test_a_batch_event_carries_the_batch_with_its_counts() -> None:
    body = body_of("batch.completed", BATCH)

    event = verify_webhook(signed(body), body, SECRET)

    assert event.job is None
    batch = event.batch
    assert batch is not None
    assert batch.status is BatchStatus.completed
    assert batch.counts.succeeded == batch.counts.total == 2


def test_header_names_are_matched_whatever_their_case() -> None:
    body = body_of("job.succeeded", JOB)
    headers = {name.title(): value for name, value in signed(body, msg_id="msg_case").items()}

    assert verify_webhook(headers, body, SECRET).id == "msg_case"


def test_a_rotated_secret_is_accepted_next_to_a_signature_that_does_not_match() -> None:
    body = body_of("job.failed", {**JOB, "status": "failed", "result": None})
    headers = signed(body)
    headers["webhook-signature"] = signed(body, OTHER_SECRET)["webhook-signature"] + " " + headers["webhook-signature"]

    assert verify_webhook(headers, body, SECRET).type == "job.failed"


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda h, b: (h, b.replace('"4"', '"5"')), id="body changed"),
        pytest.param(lambda h, b: ({**h, "webhook-id": "msg_other"}, b), id="id changed"),
        pytest.param(lambda h, b: (signed(b, OTHER_SECRET), b), id="another secret"),
        pytest.param(lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b), id="no signature"),
        pytest.param(lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b), id="no id"),
        pytest.param(lambda h, b: ({**h, "webhook-signature": "garbage"}, b), id="malformed signature"),
        pytest.param(lambda h, b: ({**h, "webhook-signature": "v1,%%%"}, b), id="signature not base64"),
        pytest.param(lambda h, b: ({**h, "webhook-timestamp": "yesterday"}, b), id="malformed timestamp"),
        pytest.param(
            lambda h, b: (signed(b, at=datetime.now(UTC) - timedelta(minutes=10)), b), id="timestamp too old (replay)"
        ),
        pytest.param(lambda h, b: (signed(b, at=datetime.now(UTC) + timedelta(minutes=10)), b), id="timestamp too new"),
    ],
)
def test_a_delivery_that_does_not_check_out_raises_webhook_verification_error(tamper: Any) -> None:
    body = body_of("job.succeeded", JOB)
    headers, sent = tamper(signed(body), body)

    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, sent, SECRET)


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '{"type": "job.succeeded"}', '{"data": {}, "type": 1}'])
def test_a_signed_body_that_is_not_an_event_is_refused_too(body: str) -> None:
    with pytest.raises(WebhookVerificationError):
        verify_webhook(signed(body), body, SECRET)


@pytest.mark.parametrize("secret", ["", "whsec_", "whsec_not base64!"])
def test_a_malformed_secret_is_a_configuration_error_not_a_rejected_delivery(secret: str) -> None:
    body = body_of("job.succeeded", JOB)

    with pytest.raises(ValueError) as raised:
        verify_webhook(signed(body), body, secret)

    assert not isinstance(raised.value, WebhookVerificationError)
