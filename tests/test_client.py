"""The Python client (client/dspy_jobs_client) against the real stack: scripted LM, workers, the API."""

import asyncio
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import dspy
import httpx
import pytest
from dspy_jobs_client import (
    AsyncClient,
    AuthenticationError,
    BatchItem,
    BatchStatus,
    Client,
    Conflict,
    ErrorEvent,
    InvalidRequest,
    JobCancelled,
    JobEvent,
    JobFailed,
    JobStatus,
    JobTimeout,
    NotFound,
    RateLimited,
    RemoteProgram,
    ResultEvent,
    StatusEvent,
    TokenEvent,
    Transcript,
)

from api.auth import digest
from harness.processes import ROOT, Proc, free_port, wait_for
from tests.conftest import OTHER_MODEL, Stack
from tests.test_events import field_text
from tests.test_jobs import QA_FIELDS, expected_result, unique

pytestmark = pytest.mark.e2e

RequestsFor = Callable[[str], list[dict[str, object]]]


@pytest.fixture
def api(stack: Stack) -> Iterator[Client]:
    with Client(stack.api_url) as client:
        yield client


def assert_whole_stream(events: list[JobEvent], question: str) -> None:
    """Numbered 1..n with no gap or repeat, one attempt, and tokens that spell the final result."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.status for e in events if isinstance(e, StatusEvent)] == ["queued", "running"]
    assert isinstance(events[-1], ResultEvent)
    result = events[-1].job.result
    assert result == expected_result(question)
    transcript = Transcript()
    for event in events:
        transcript.apply(event)
    assert transcript.fields == {name: field_text(value) for name, value in result.items()}


def test_submit_then_result_is_the_programs_typed_output(api: Client) -> None:
    question = unique("Why is the sky blue?")

    job = api.submit("qa", question=question)
    submitted = job.record

    assert submitted.status is JobStatus.queued
    assert submitted.program == "qa"
    assert job.result(timeout=60) == expected_result(question)
    assert job.record.status is JobStatus.succeeded
    assert job.record.usage is not None and job.record.usage.completion_tokens > 0
    assert api.get_job(job.id).record.result == expected_result(question)


def test_create_job_with_wait_comes_back_finished_in_one_round_trip(api: Client) -> None:
    question = unique("Answer me at once.")

    job = api.create_job("qa", {"question": question}, wait_s=30)

    assert job.record.status is JobStatus.succeeded
    assert job.record.result == expected_result(question)


def test_options_reach_the_job_and_the_lm(api: Client, lm_requests: RequestsFor) -> None:
    question = unique("Which model answers?")

    job = api.create_job("qa", {"question": question}, model=OTHER_MODEL, temperature=0.3, stream=False)
    job.result(timeout=60)

    assert job.record.model == OTHER_MODEL
    assert job.record.raw["temperature"] == 0.3
    assert job.record.raw["stream"] is False
    [request] = lm_requests(question)
    assert request["model"] == OTHER_MODEL.removeprefix("openai/")
    assert request["temperature"] == 0.3


def test_the_same_idempotency_key_returns_the_original_job(api: Client) -> None:
    key = uuid.uuid4().hex
    question = unique("Only once.")

    first = api.create_job("qa", {"question": question}, idempotency_key=key)
    second = api.create_job("qa", {"question": question}, idempotency_key=key)

    assert second.id == first.id


def test_stream_yields_typed_events_that_spell_the_result(api: Client) -> None:
    question = unique("Stream it. [lm:tps=200]")
    job = api.submit("qa", question=question)

    events = list(job.stream())

    assert_whole_stream(events, question)
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert list(dict.fromkeys(t.field for t in tokens)) == QA_FIELDS
    running = next(e for e in events if isinstance(e, StatusEvent) and e.starts_attempt)
    assert running.attempt == 1
    assert job.record.status is JobStatus.succeeded


def test_a_stream_left_early_resumes_from_its_last_event_id_with_nothing_repeated_or_lost(api: Client) -> None:
    question = unique("Leave and come back. [lm:tps=50]")
    job = api.submit("qa", question=question)
    first: list[JobEvent] = []
    for event in job.stream():
        first.append(event)
        if len(first) == 6:
            break

    rest = list(job.stream(last_event_id=first[-1].seq))

    assert_whole_stream(first + rest, question)
    assert list(job.stream()) == first + rest


def test_keep_alive_comments_on_a_quiet_stream_are_skipped(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    stack.extra_env = {"SSE_PING_S": "0.2"}
    stack.start_worker()
    stack.start_api()
    # The LM is silent for 1.5 s before its first token: the server sends several keep-alives meanwhile.
    question = unique("Think quietly first. [lm:delay_s=1.5]")

    with Client(stack.api_url) as client:
        events = list(client.submit("qa", question=question).stream())

    assert_whole_stream(events, question)


def test_a_stream_started_past_the_last_event_ends_instead_of_waiting_forever(api: Client) -> None:
    job = api.submit("qa", question=unique("Short. [lm:tps=500]"))
    last = list(job.stream())[-1].seq

    assert list(job.stream(last_event_id=last)) == []


def start_api_on(stack: Stack, port: int) -> Proc:
    """The API on a port chosen beforehand, so a restarted one answers where the client already points."""
    command = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)]
    proc = Proc("api-client-restart", [*command, "--log-level", "warning"], stack.env)
    stack.procs.append(proc)
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200, 30, "API", proc)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_a_stream_across_an_api_restart_equals_the_final_result(
    make_stack: Callable[..., Stack], sig: signal.Signals
) -> None:
    stack = make_stack()
    stack.start_worker()
    port = free_port()
    api_proc = start_api_on(stack, port)
    question = unique("Keep talking while the API restarts. [lm:tps=5]")
    events: list[JobEvent] = []
    with Client(f"http://127.0.0.1:{port}") as client:
        job = client.submit("qa", question=question)
        for event in job.stream():
            events.append(event)
            if api_proc.popen.poll() is None and sum(isinstance(e, TokenEvent) for e in events) == 5:
                api_proc.stop(sig)
                api_proc = start_api_on(stack, port)
        final = client.get_job(job.id).record

    assert api_proc.popen.poll() is None, "the API should have been restarted once, mid-stream"
    assert_whole_stream(events, question)
    assert isinstance(events[-1], ResultEvent)
    assert events[-1].job.result == final.result


def test_a_failed_job_raises_job_failed_and_its_stream_ends_with_an_error_event(api: Client) -> None:
    job = api.submit("qa", question=unique("[lm:garbage]"))

    with pytest.raises(JobFailed) as raised:
        job.result(timeout=60)

    assert raised.value.failure.type == "AdapterParseError"
    assert raised.value.job.status is JobStatus.failed
    events = list(job.stream())
    assert isinstance(events[-1], ErrorEvent)
    assert events[-1].job.error == raised.value.failure


def test_cancel_stops_the_job_and_a_second_cancel_is_a_conflict_with_the_servers_message(api: Client) -> None:
    job = api.submit("qa", question=unique("Take your time. [lm:delay_s=30]"))

    assert job.cancel().status is JobStatus.cancelled
    with pytest.raises(JobCancelled):
        job.result(timeout=10)
    with pytest.raises(Conflict) as raised:
        job.cancel()
    assert raised.value.status_code == 409
    assert raised.value.message


def test_result_gives_up_after_its_timeout_and_the_job_goes_on(api: Client) -> None:
    job = api.submit("qa", question=unique("Slow. [lm:delay_s=5]"))

    with pytest.raises(JobTimeout) as raised:
        job.result(timeout=0.5)

    assert raised.value.job.status in (JobStatus.queued, JobStatus.running)
    assert job.result(timeout=60)["answer"]


def test_unknown_ids_and_programs_raise_not_found_with_the_servers_message(api: Client) -> None:
    missing = uuid.uuid4().hex
    with pytest.raises(NotFound) as raised:
        api.get_job(missing)
    assert raised.value.status_code == 404
    assert missing in raised.value.message

    with pytest.raises(NotFound) as raised:
        api.submit("no-such-program", question="?")
    assert "no-such-program" in raised.value.message

    with pytest.raises(NotFound):
        api.get_batch(missing)
    with pytest.raises(NotFound):
        api.program("no-such-program")


def test_invalid_input_raises_invalid_request_naming_the_field(api: Client) -> None:
    with pytest.raises(InvalidRequest) as raised:
        api.submit("qa", questoin="typo in the field name")

    assert raised.value.status_code == 422
    assert "questoin" in raised.value.message
    assert isinstance(raised.value.detail, list)

    with pytest.raises(InvalidRequest) as raised:
        api.create_job("qa", {"question": "fine"}, temperature=7.0)
    assert "temperature" in raised.value.message


def test_over_the_submission_rate_raises_rate_limited_with_retry_after_unless_retries_wait_for_it(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    stack.extra_env = {"KEY_SUBMIT_RATE_PER_S": "0.5", "KEY_SUBMIT_BURST": "1"}
    stack.start_api()  # no worker: the jobs stay queued, which is all this needs

    with Client(stack.api_url, max_retries=0) as impatient, Client(stack.api_url) as patient:
        impatient.submit("qa", question=unique("the one allowed"))
        with pytest.raises(RateLimited) as raised:
            impatient.submit("qa", question=unique("one too many"))
        # The default client sleeps through the server's Retry-After and tries again.
        retried = patient.submit("qa", question=unique("worth the wait"))

    assert raised.value.status_code == 429
    assert raised.value.retry_after_s is not None and raised.value.retry_after_s >= 1
    assert "too many submissions" in raised.value.message
    assert retried.record.status is JobStatus.queued


def test_the_api_key_is_sent_as_a_bearer_token_and_a_wrong_one_is_an_authentication_error(
    make_stack: Callable[..., Stack],
) -> None:
    key = "dj_" + uuid.uuid4().hex
    stack = make_stack()
    stack.extra_env = {"API_KEYS": f"me:{digest(key)}"}
    stack.start_api()  # no worker: a queued job is enough to show whose it is

    with Client(stack.api_url, api_key=key) as owner, Client(stack.api_url, api_key="dj_wrong") as stranger:
        job = owner.submit("qa", question=unique("mine"))
        assert owner.get_job(job.id).record.status is JobStatus.queued
        with pytest.raises(AuthenticationError) as raised:
            stranger.get_job(job.id)

    assert raised.value.status_code == 401
    assert "not valid" in raised.value.message


def test_a_batch_of_1000_reads_back_every_result_in_order_as_the_api_pages_them(api: Client, stack: Stack) -> None:
    run = uuid.uuid4().hex[:8]
    items = [BatchItem({"question": f"item {i} of {run}"}, custom_id=f"row-{i}") for i in range(1000)]

    batch = api.batch("qa", items)
    assert batch.record.counts.total == 1000
    done = batch.wait(timeout=280)

    assert done.status is BatchStatus.completed
    assert done.counts.succeeded == 1000
    assert batch.progress().counts == done.counts
    results = list(batch.results())
    assert [r.index for r in results] == list(range(1000))
    assert [r.custom_id for r in results] == [f"row-{i}" for i in range(1000)]
    assert all(r.status is JobStatus.succeeded for r in results)
    assert results[7].result == expected_result(f"item 7 of {run}")
    with stack.client() as http:
        pages: list[dict[str, Any]] = []
        cursor: int | None = 0
        while cursor is not None:
            page = http.get(f"/batches/{batch.id}/results", params={"cursor": cursor, "limit": 1000}).json()
            pages += page["items"]
            cursor = page["next_cursor"]
    assert [r.raw for r in results] == pages


class AnswerThenTriage(dspy.Module):
    """A pipeline with two served steps: the second reads the first's typed output."""

    def __init__(self, client: Client | AsyncClient) -> None:
        super().__init__()
        self.answer = RemoteProgram(client, "qa")
        self.triage = RemoteProgram(client, "triage")

    def forward(self, question: str) -> dspy.Prediction:
        answered = self.answer(question=question)
        triaged = self.triage(ticket=answered.answer)
        return dspy.Prediction(
            answer=answered.answer,
            concepts=len(answered.key_concepts),
            category=triaged.category,
            urgent=triaged.urgency >= 3,
        )

    async def aforward(self, question: str) -> dspy.Prediction:
        answered = await self.answer.acall(question=question)
        triaged = await self.triage.acall(ticket=answered.answer)
        return dspy.Prediction(
            answer=answered.answer,
            concepts=len(answered.key_concepts),
            category=triaged.category,
            urgent=triaged.urgency >= 3,
        )


def expected_pipeline(question: str) -> dict[str, Any]:
    answer = expected_result(question)["answer"]
    return {"answer": answer, "concepts": 2, "category": "billing", "urgent": True}


def test_the_readme_example_runs_as_written(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (ROOT / "README.md").read_text()
    example = readme.split("## Python client", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]

    exec(example.replace("http://127.0.0.1:8000", stack.api_url), {})

    expected = expected_result("What is the capital of France?")
    streamed = "".join(field_text(expected[name]) for name in QA_FIELDS)
    assert capsys.readouterr().out == f"{streamed}\n {expected['answer']}\n"


def test_remote_programs_are_typed_steps_of_a_dspy_pipeline(api: Client) -> None:
    question = unique("What is a pipeline?")
    pipeline = AnswerThenTriage(api)

    with dspy.track_usage() as usage:
        prediction = pipeline(question=question)

    assert prediction.toDict() == expected_pipeline(question)
    step = pipeline.triage(ticket="The invoice is wrong")
    assert isinstance(step.urgency, int) and step.urgency == 3
    assert step.summary == "summary for The invoice is wrong"
    assert set(usage.get_total_tokens()) == {"dspy-jobs/qa", "dspy-jobs/triage"}
    # Optimizers deep-copy pipelines: the copy shares the client and still runs.
    copied = pipeline.deepcopy()
    assert copied.answer.client is api
    assert copied(question=question).toDict() == expected_pipeline(question)


def test_a_remote_program_that_fails_raises_one_out_of_time_is_cancelled_and_an_unknown_one_is_not_found(
    api: Client,
) -> None:
    with pytest.raises(JobFailed):
        RemoteProgram(api, "qa")(question=unique("[lm:garbage]"))
    with pytest.raises(JobTimeout) as raised:
        RemoteProgram(api, "qa", timeout_s=0.5)(question=unique("Too slow. [lm:delay_s=5]"))
    assert api.get_job(raised.value.job.id).record.status is JobStatus.cancelled
    with pytest.raises(NotFound):
        RemoteProgram(api, "no-such-program")(question="?")


def test_the_async_client_submits_streams_and_runs_a_pipeline(stack: Stack) -> None:
    asked, streamed, piped = (unique(q) for q in ("Asked.", "Streamed. [lm:tps=200]", "Piped."))

    async def run() -> tuple[dict[str, Any], list[JobEvent], dict[str, Any]]:
        async with AsyncClient(stack.api_url) as client:
            result = await (await client.submit("qa", question=asked)).result(timeout=60)
            events = [event async for event in (await client.submit("qa", question=streamed)).stream()]
            pipeline = AnswerThenTriage(client)
            with pytest.raises(TypeError, match="acall"):
                pipeline(question=piped)
            prediction = await pipeline.acall(question=piped)
            return result, events, prediction.toDict()

    result, events, prediction = asyncio.run(run())

    assert result == expected_result(asked)
    assert_whole_stream(events, streamed)
    assert prediction == expected_pipeline(piped)
