"""Completion webhooks against the real stack and a real HTTP receiver on loopback."""

import base64
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from harness.processes import free_port, wait_for
from harness.webhook_receiver import Receiver
from tests.conftest import Stack
from tests.test_jobs import unique, wait_finished

pytestmark = pytest.mark.e2e

SECRET = "whsec_" + base64.b64encode(b"a test secret of thirty-two bytes").decode()
# Quick retries and a short window, so the tests see a delivery through in seconds.
WEBHOOK_ENV = {
    "WEBHOOK_SECRET": SECRET,
    "WEBHOOK_ALLOW_PRIVATE": "true",
    "WEBHOOK_TIMEOUT_S": "2",
    "WEBHOOK_RETRY_WINDOW_S": "120",
}


@pytest.fixture
def hooked(make_stack: Callable[..., Stack]) -> Callable[..., Stack]:
    def make(appendonly: bool = False, **env: str) -> Stack:
        stack = make_stack(appendonly=appendonly)
        stack.extra_env.update({**WEBHOOK_ENV, **env})
        return stack

    return make


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def submit(client: httpx.Client, url: str, question: str | None = None, **body: Any) -> dict[str, Any]:
    answer = client.post("/jobs", json={"question": question or unique("hook"), "webhook_url": url, **body})
    assert answer.status_code == 202, answer.text
    job: dict[str, Any] = answer.json()
    return job


def webhook_of(client: httpx.Client, path: str, until: Callable[[dict[str, Any]], bool], timeout_s: float) -> Any:
    """The record's `webhook` once `until` holds for it."""
    seen: dict[str, Any] = {}

    def check() -> bool:
        seen.update(client.get(path).json()["webhook"])
        return until(seen)

    wait_for(check, timeout_s, f"webhook of {path} to {until.__name__}")
    return seen


def delivered(state: dict[str, Any]) -> bool:
    return state["status"] == "delivered"


def failed(state: dict[str, Any]) -> bool:
    return state["status"] == "failed"


def test_a_finished_job_sends_one_signed_event_that_standardwebhooks_verifies(
    hooked: Callable[..., Stack], receiver: Receiver
) -> None:
    stack = hooked()
    stack.start_worker()
    stack.start_api()
    with stack.client() as client:
        job = submit(client, receiver.url)
        assert job["webhook"] == {
            "url": receiver.url,
            "status": "pending",
            "attempts": 0,
            "last_status_code": None,
            "last_error": None,
        }
        finished = wait_finished(client, job["id"])
        (event,) = receiver.wait_for(1, 30)
        state = webhook_of(client, f"/jobs/{job['id']}", delivered, 10)

    payload = Webhook(SECRET).verify(event.body, event.headers)
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["id"] == job["id"]
    assert payload["data"]["result"] == finished["result"]
    assert payload["data"]["status"] == "succeeded"
    assert payload["timestamp"].endswith("Z")
    assert event.headers["webhook-id"] == f"msg_job_{job['id']}"
    assert event.headers["content-type"] == "application/json"
    assert state == {**state, "status": "delivered", "attempts": 1, "last_status_code": 200, "last_error": None}
    time.sleep(1)
    assert len(receiver.received) == 1


def test_a_receiver_answering_500_twice_gets_the_event_on_the_third_attempt_with_the_same_id(
    hooked: Callable[..., Stack],
) -> None:
    stack = hooked()
    stack.start_worker()
    stack.start_api()
    with Receiver(answers=[500, 500]) as receiver, stack.client() as client:
        job = submit(client, receiver.url)
        events = receiver.wait_for(3, 30)
        state = webhook_of(client, f"/jobs/{job['id']}", delivered, 10)
        metrics = client.get("/metrics").text

    assert len(events) == 3
    assert len({e.headers["webhook-id"] for e in events}) == 1
    assert len({e.body for e in events}) == 1, "every attempt sends the same body"
    for event in events:
        Webhook(SECRET).verify(event.body, event.headers)
    assert state["attempts"] == 3 and state["last_status_code"] == 200
    assert 'dspy_jobs_webhook_deliveries_total{outcome="retrying"} 2.0' in metrics
    assert 'dspy_jobs_webhook_deliveries_total{outcome="delivered"} 1.0' in metrics


def test_a_receiver_down_for_20_seconds_gets_the_event_after(hooked: Callable[..., Stack]) -> None:
    stack = hooked()
    stack.start_worker()
    stack.start_api()
    port = free_port()
    with stack.client() as client:
        job = submit(client, f"http://127.0.0.1:{port}/hook")
        wait_finished(client, job["id"])
        time.sleep(20)
        down = client.get(f"/jobs/{job['id']}").json()["webhook"]
        with Receiver(port=port) as receiver:
            (event,) = receiver.wait_for(1, 60)
            state = webhook_of(client, f"/jobs/{job['id']}", delivered, 10)

    assert down["status"] == "pending" and down["attempts"] >= 3
    assert "ConnectError" in down["last_error"]
    assert Webhook(SECRET).verify(event.body, event.headers)["type"] == "job.succeeded"
    assert state["attempts"] == down["attempts"] + 1 or state["attempts"] > down["attempts"]


def test_a_worker_killed_mid_delivery_leaves_the_event_to_be_delivered_by_another(
    hooked: Callable[..., Stack],
) -> None:
    stack = hooked()
    first = stack.start_worker()
    stack.start_api()
    # The first attempt is held open, unanswered, while its worker is killed.
    with Receiver(answers=[None]) as receiver, stack.client() as client:
        job = submit(client, receiver.url)
        receiver.wait_for(1, 30)
        first.stop(signal.SIGKILL)
        stack.start_worker()
        events = receiver.wait_for(2, 60)
        state = webhook_of(client, f"/jobs/{job['id']}", delivered, 10)

    assert len(events) == 2
    assert events[0].headers["webhook-id"] == events[1].headers["webhook-id"]
    assert state["attempts"] == 2


def test_a_pending_delivery_survives_a_redis_restart(hooked: Callable[..., Stack]) -> None:
    stack = hooked(appendonly=True)
    stack.start_worker()
    stack.start_api()
    port = free_port()
    with stack.client() as client:
        job = submit(client, f"http://127.0.0.1:{port}/hook")
        wait_finished(client, job["id"])
        webhook_of(client, f"/jobs/{job['id']}", lambda s: s["attempts"] >= 1, 10)
        stack.stop_redis()
        stack.start_redis_again()
        with Receiver(port=port) as receiver:
            (event,) = receiver.wait_for(1, 60)
            state = webhook_of(client, f"/jobs/{job['id']}", delivered, 20)

    assert Webhook(SECRET).verify(event.body, event.headers)["data"]["id"] == job["id"]
    assert state["status"] == "delivered"


def test_410_gone_stops_retrying_and_a_redirect_is_not_followed(hooked: Callable[..., Stack]) -> None:
    stack = hooked()
    stack.start_worker()
    stack.start_api()
    with Receiver(then=410) as gone, Receiver(answers=[302]) as moving, stack.client() as client:
        job_gone = submit(client, gone.url)
        job_moving = submit(client, moving.url)
        gone_state = webhook_of(client, f"/jobs/{job_gone['id']}", failed, 30)
        moving_state = webhook_of(client, f"/jobs/{job_moving['id']}", delivered, 30)
        time.sleep(2)

    assert gone_state["attempts"] == 1 and gone_state["last_status_code"] == 410
    assert len(gone.received) == 1
    # The 302 was an unsuccessful answer like any other: retried at the same URL, never at its Location.
    assert len(moving.received) == 2
    assert moving_state["attempts"] == 2


def test_a_job_whose_receiver_never_answers_succeeds_and_shows_the_delivery_failed_after_the_window(
    hooked: Callable[..., Stack],
) -> None:
    stack = hooked(WEBHOOK_TIMEOUT_S="1", WEBHOOK_RETRY_WINDOW_S="6")
    worker = stack.start_worker()
    stack.start_api()
    with Receiver(then=None, hold_s=30) as silent, stack.client() as client:
        job = submit(client, silent.url)
        finished = wait_finished(client, job["id"])
        # Jobs are not held up by the receiver: another one runs while the first delivery hangs.
        other = wait_finished(client, submit(client, silent.url)["id"])
        state = webhook_of(client, f"/jobs/{job['id']}", failed, 30)

    assert finished["status"] == "succeeded" and other["status"] == "succeeded"
    assert state["attempts"] >= 2
    assert state["last_status_code"] is None and "no answer within 1 s" in state["last_error"]
    log = worker.own_log()
    assert SECRET not in log and SECRET.removeprefix("whsec_") not in log
    assert "must not log" not in log


def test_a_batch_sends_one_event_when_it_completes_and_its_items_send_none(
    hooked: Callable[..., Stack], receiver: Receiver
) -> None:
    stack = hooked()
    stack.start_worker(name="worker-bulk", queues="bulk")
    stack.start_api()
    with stack.client() as client:
        answer = client.post(
            "/batches", json={"items": [{"question": unique(f"b{i}")} for i in range(3)], "webhook_url": receiver.url}
        )
        assert answer.status_code == 202, answer.text
        batch_id = answer.json()["id"]
        (event,) = receiver.wait_for(1, 60)
        state = webhook_of(client, f"/batches/{batch_id}", delivered, 10)
        time.sleep(1)

    payload = Webhook(SECRET).verify(event.body, event.headers)
    assert payload["type"] == "batch.completed"
    assert payload["data"]["id"] == batch_id and payload["data"]["counts"]["succeeded"] == 3
    assert event.headers["webhook-id"] == f"msg_batch_{batch_id}"
    assert len(receiver.received) == 1
    assert state["attempts"] == 1


def test_a_cancelled_job_sends_job_cancelled(hooked: Callable[..., Stack], receiver: Receiver) -> None:
    stack = hooked()
    stack.start_worker()
    stack.start_api()
    with stack.client() as client:
        job = submit(client, receiver.url, question=unique("slow [lm:tps=5]"))
        assert client.post(f"/jobs/{job['id']}/cancel").status_code == 200
        (event,) = receiver.wait_for(1, 30)

    payload = Webhook(SECRET).verify(event.body, event.headers)
    assert payload["type"] == "job.cancelled" and payload["data"]["status"] == "cancelled"


PRIVATE_RECEIVERS = [
    "https://127.0.0.1/hook",
    "https://10.0.0.1/hook",
    "https://169.254.169.254/latest/meta-data",
    "https://[::1]/hook",
    "https://localhost/hook",  # a name that resolves to loopback
]


def test_private_receivers_are_refused_with_422_naming_webhook_url_by_default(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    stack.extra_env["WEBHOOK_SECRET"] = SECRET
    stack.start_api()
    with stack.client() as client:
        answers = {
            url: client.post("/jobs", json={"question": unique("ssrf"), "webhook_url": url})
            for url in PRIVATE_RECEIVERS
        }
        batches = {
            url: client.post("/batches", json={"items": [{"question": "q"}], "webhook_url": url})
            for url in PRIVATE_RECEIVERS
        }

    for url, answer in answers.items():
        assert answer.status_code == 422, (url, answer.text)
        assert answer.json()["detail"][0]["loc"] == ["body", "webhook_url"], url
        assert answer.json()["message"].startswith("webhook_url: "), url
    assert [b.status_code for b in batches.values()] == [422] * len(PRIVATE_RECEIVERS)
    assert not list(stack.redis().scan_iter("dj:job:*")), "nothing is stored of a refused submission"


def test_a_job_that_expires_unstarted_sends_job_expired_and_a_cancelled_batch_batch_cancelled(
    hooked: Callable[..., Stack], receiver: Receiver
) -> None:
    stack = hooked()
    stack.start_api()
    with stack.client() as client:
        job = submit(client, receiver.url, expires_after_s=0.5)
        batch = client.post(
            "/batches",
            json={"items": [{"question": unique(f"c{i}")} for i in range(3)], "webhook_url": receiver.url},
        ).json()
        assert client.post(f"/batches/{batch['id']}/cancel").status_code == 200
        time.sleep(1)
        stack.start_worker()  # no worker was there to start the job in time; this one's reaper ends it
        events = receiver.wait_for(2, 30)

    by_type = {Webhook(SECRET).verify(e.body, e.headers)["type"]: e for e in events}
    assert set(by_type) == {"job.expired", "batch.cancelled"}
    assert by_type["job.expired"].headers["webhook-id"] == f"msg_job_{job['id']}"


def test_a_receiver_that_hangs_holds_only_its_share_of_the_senders_slots(hooked: Callable[..., Stack]) -> None:
    # Four slots: the hanging receiver may hold one of them, however many of its events are due and on however
    # many of its ports; a receiver is its host (its registrable domain), so the healthy one is on another address.
    stack = hooked(WEBHOOK_CONCURRENCY="4", WEBHOOK_TIMEOUT_S="20")
    stack.start_worker()
    stack.start_api()
    with (
        Receiver(then=None, hold_s=30) as hanging,
        Receiver(then=None, hold_s=30) as hanging_elsewhere,
        Receiver(host="127.0.0.2") as healthy,
        stack.client() as client,
    ):
        for i in range(6):
            wait_finished(client, submit(client, (hanging, hanging_elsewhere)[i % 2].url)["id"])
        wait_for(lambda: len(hanging.received) + len(hanging_elsewhere.received) >= 1, 10, "the first attempt")
        job = submit(client, healthy.url)
        (event,) = healthy.wait_for(1, 30)
        held_open = len(hanging.received) + len(hanging_elsewhere.received)

    assert Webhook(SECRET).verify(event.body, event.headers)["data"]["id"] == job["id"]
    assert held_open == 1, "the hanging receiver got more than its one slot"
