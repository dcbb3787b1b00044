"""Flower, as `make up` and the compose file run it: refuses anonymous visitors, and lists the
workers whether or not Celery's task events are on."""

from collections.abc import Callable

import httpx
import pytest

from harness.processes import wait_for
from tests.conftest import FLOWER_AUTH, Stack
from tests.test_jobs import expected_result, unique, wait_finished

pytestmark = pytest.mark.e2e


def test_flower_refuses_an_unauthenticated_request(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    url = stack.start_flower()[0] + "/"

    anonymous = httpx.get(url)
    wrong = httpx.get(url, auth=("admin", "guess"))
    allowed = httpx.get(url, auth=FLOWER_AUTH)

    assert anonymous.status_code == 401
    assert wrong.status_code == 401
    assert allowed.status_code == 200


def test_with_task_events_off_jobs_run_and_flower_still_lists_the_worker_but_not_its_tasks(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    stack.extra_env["TASK_EVENTS"] = "false"
    worker = stack.start_worker()
    stack.start_api()
    flower_url, _ = stack.start_flower()

    question = unique("Am I seen?")
    with stack.client() as client:
        job_id = client.post("/jobs", json={"question": question}).json()["id"]
        job = wait_finished(client, job_id)
    assert job["status"] == "succeeded" and job["result"] == expected_result(question)

    def listed_workers() -> list[str]:
        return list(httpx.get(f"{flower_url}/api/workers?refresh=1", auth=FLOWER_AUTH, timeout=30).json())

    wait_for(lambda: worker.hostname in listed_workers(), 30, "Flower to list the worker", worker)
    assert httpx.get(f"{flower_url}/api/task/info/{job_id}", auth=FLOWER_AUTH).status_code == 404
