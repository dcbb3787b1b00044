"""A new route that submits work needs its body, its answer and one dependency (api/submission.py)."""

from collections.abc import Iterator

import pytest
from fastapi import Response
from fastapi.testclient import TestClient

from api.schemas import JobOptions
from api.submission import SubmissionDep
from core.jobs import Job
from core.settings import get_settings
from tests.conftest import Stack
from tests.test_jobs import unique

pytestmark = pytest.mark.e2e


class ToyBody(JobOptions):
    """A toy route's body: one text, and the usual job options."""

    text: str


@pytest.fixture
def app_on_the_stack(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The API, in this process, on the shared stack's Redis (its worker runs what the toy route submits)."""
    for name, value in stack.env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    from api.main import create_app

    app = create_app()

    @app.post("/toy", status_code=202, response_model=Job)
    async def toy(body: ToyBody, submission: SubmissionDep) -> Job | Response:
        return await submission.job("qa", {"question": body.text}, body)

    with TestClient(app) as client:
        yield client
    get_settings.cache_clear()


def test_a_toy_route_submits_a_job_that_runs_like_any_other(app_on_the_stack: TestClient) -> None:
    question = unique("toy")
    headers = {"Idempotency-Key": question}

    accepted = app_on_the_stack.post("/toy", json={"text": question}, headers=headers)
    again = app_on_the_stack.post("/toy", json={"text": question}, headers=headers)
    finished = app_on_the_stack.get(f"/jobs/{accepted.json()['id']}", params={"wait": 30}).json()

    assert accepted.status_code == 202 and accepted.headers["location"] == f"/jobs/{accepted.json()['id']}"
    assert again.json()["id"] == accepted.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert finished["status"] == "succeeded" and finished["input"] == {"question": question}
