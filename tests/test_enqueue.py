"""The API writes a job's Celery message itself (api/enqueue.py): it must be the message
`send_task` would have sent, consumed by real workers and shown by Flower."""

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from api.enqueue import TaskMessages
from core.queue import RUN_JOB_TASK, make_celery
from core.settings import Settings
from harness.processes import wait_for
from tests.conftest import FLOWER_AUTH, Stack
from tests.test_jobs import expected_result, unique, wait_finished

pytestmark = pytest.mark.e2e

# Differ between any two messages, however they were sent.
_PER_MESSAGE = {"delivery_tag", "timestamp", "clock"}


def _decoded(raw: str) -> dict[str, Any]:
    envelope: dict[str, Any] = json.loads(raw)
    envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
    for name in _PER_MESSAGE:
        envelope["properties"].pop(name, None)
    if isinstance(envelope["body"], dict):
        for name in _PER_MESSAGE:
            envelope["body"].pop(name, None)
    return envelope


def test_the_job_message_is_the_one_send_task_writes_with_the_same_task_sent_event(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    r = stack.redis()
    events = r.pubsub()
    events.psubscribe("*celeryev*")
    events.get_message(timeout=1)  # the subscription's confirmation
    celery = make_celery(Settings(redis_url=stack.redis_url))

    celery.send_task(RUN_JOB_TASK, args=["job-a"], task_id="job-a")
    sent_by_celery = r.rpop("interactive")
    celery_event = events.get_message(timeout=5)
    ours = TaskMessages(celery).build(RUN_JOB_TASK, "job-a", ["job-a"], "interactive")

    assert isinstance(sent_by_celery, str) and celery_event is not None
    assert _decoded(ours.message) == _decoded(sent_by_celery)
    assert ours.event_channel == celery_event["channel"]
    assert _decoded(ours.event) == _decoded(celery_event["data"])


def test_a_job_sent_this_way_runs_and_flower_shows_it_succeeded(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    stack.start_worker()
    stack.start_api()
    flower_url, flower = stack.start_flower()
    auth = FLOWER_AUTH
    time.sleep(1.0)  # Flower subscribes to events once it is up; a job before that would go unseen

    question = unique("Does Flower see me?")
    with stack.client() as client:
        job_id = client.post("/jobs", json={"question": question}).json()["id"]
        job = wait_finished(client, job_id)

    assert job["status"] == "succeeded" and job["result"] == expected_result(question)

    def flower_says_succeeded() -> bool:
        task = httpx.get(f"{flower_url}/api/task/info/{job_id}", auth=auth)
        return task.status_code == 200 and task.json().get("state") == "SUCCESS"

    wait_for(flower_says_succeeded, 20, "Flower to show the task as succeeded", flower)
    task = httpx.get(f"{flower_url}/api/task/info/{job_id}", auth=auth).json()
    assert task["name"] == RUN_JOB_TASK
    assert task["args"] == repr([job_id, ""])
    assert task["sent"] is not None, "the task-sent event written with the job reached Flower"


def test_a_job_whose_transaction_fails_is_not_stored(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    stack.start_api()
    r: redis.Redis = stack.redis()
    # Every write of the transaction is refused while Redis is read-only.
    r.config_set("min-replicas-to-write", 1)
    try:
        with stack.client() as client:
            response = client.post("/jobs", json={"question": "refused?"})
    finally:
        r.config_set("min-replicas-to-write", 0)

    assert response.status_code == 503
    assert r.llen("interactive") == 0
    assert r.keys("dj:job:*") == []
