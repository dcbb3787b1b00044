"""OpenAI's Files and Batch APIs, driven by the `openai` package unchanged, on a real stack (scripted LM)."""

import hashlib
import io
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types import Batch
from openai.types.chat import ChatCompletion

from harness.processes import start_api, start_redis, start_worker
from tests.conftest import Stack

pytestmark = pytest.mark.e2e

KEY_A, KEY_B = (f"dj_{name}_{uuid.uuid4().hex}" for name in ("a", "b"))


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def stack(lm_api_base: str) -> Iterator[Stack]:
    redis_proc, url = start_redis("redis-openai-batches")
    assert redis_proc is not None
    stack = Stack(url, lm_api_base, [redis_proc])
    # Four LM calls at once: a batch takes long enough that a cancel finds items not started yet.
    stack.extra_env = {"API_KEYS": f"a:{digest(KEY_A)},b:{digest(KEY_B)}", "LM_MAX_IN_FLIGHT": "4"}
    stack.procs.append(start_worker(stack.env, name="worker-oai-batches", queues="interactive"))
    stack.procs.append(start_worker(stack.env, name="worker-oai-batches-bulk", queues="bulk"))
    proc, stack.api_url = start_api(stack.env, name="api-oai-batches")
    stack.procs.append(proc)
    yield stack
    stack.stop()


@pytest.fixture
def client_a(stack: Stack) -> Iterator[OpenAI]:
    with OpenAI(base_url=stack.api_url + "/v1", api_key=KEY_A, max_retries=0) as client:
        yield client


@pytest.fixture
def client_b(stack: Stack) -> Iterator[OpenAI]:
    with OpenAI(base_url=stack.api_url + "/v1", api_key=KEY_B, max_retries=0) as client:
        yield client


def request(custom_id: str, question: str, model: str = "qa", url: str = "/v1/chat/completions") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": question}]}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def jsonl(lines: list[dict[str, Any]]) -> io.BytesIO:
    return io.BytesIO(b"".join(json.dumps(line).encode() + b"\n" for line in lines))


def upload(client: OpenAI, lines: list[dict[str, Any]]) -> str:
    return client.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch").id


def until_ended(client: OpenAI, batch_id: str, timeout_s: float = 300) -> Batch:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        time.sleep(0.5)
    raise TimeoutError(f"batch {batch_id} still {batch.status}: {batch.request_counts}")


def lines_of(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line]


def test_a_1000_line_file_runs_to_an_output_file_with_every_custom_id_once(client_a: OpenAI) -> None:
    run = uuid.uuid4().hex[:8]
    refused = {f"r{i}" for i in range(0, 1000, 97)}  # these the LM refuses (400): they end in the error file
    lines = [
        request(f"r{i}", f"question {run} {i}" + (" [lm:status=400]" if f"r{i}" in refused else ""))
        for i in range(1000)
    ]

    batch = client_a.batches.create(
        input_file_id=upload(client_a, lines), endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "in_progress" and batch.request_counts and batch.request_counts.total == 1000
    done = until_ended(client_a, batch.id)

    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1000 - len(refused), len(refused))
    output, errors = lines_of(client_a, done.output_file_id), lines_of(client_a, done.error_file_id)
    assert sorted(line["custom_id"] for line in output + errors) == sorted(f"r{i}" for i in range(1000))
    for line in output:
        completion = ChatCompletion.model_validate(line["response"]["body"])
        assert line["response"]["status_code"] == 200 and completion.choices[0].message.content
    assert {line["custom_id"] for line in errors} == refused
    assert all(line["response"]["status_code"] == 400 and line["response"]["body"]["error"] for line in errors)
    assert done.completed_at and done.finalizing_at and done.in_progress_at


def test_a_file_with_a_bad_line_fails_validation_naming_the_line_and_nothing_runs(client_a: OpenAI) -> None:
    lines = [
        request("ok-1", "fine"),
        request("ok-1", "the same custom_id again"),
        request("other", "another endpoint", url="/v1/completions"),
        request("ghost", "an unknown program", model="no-such-program"),
    ]
    file_id = client_a.files.create(
        file=("bad.jsonl", io.BytesIO(jsonl(lines).getvalue() + b"{not json\n")), purpose="batch"
    ).id

    batch = client_a.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")

    assert batch.status == "failed" and batch.errors and batch.errors.data
    assert [(e.line, e.code) for e in batch.errors.data] == [
        (2, "duplicate_custom_id"),
        (3, "invalid_url"),
        (4, "model_not_found"),
        (5, "invalid_json"),
    ]
    assert batch.request_counts is None and batch.output_file_id is None


def test_cancelling_a_running_batch_ends_it_cancelled_with_its_finished_items_in_the_output_file(
    client_a: OpenAI,
) -> None:
    run = uuid.uuid4().hex[:8]
    lines = [request(f"c{i}", f"slow {run} {i} [lm:delay_s=1]") for i in range(60)]
    batch = client_a.batches.create(
        input_file_id=upload(client_a, lines), endpoint="/v1/chat/completions", completion_window="24h"
    )
    while (client_a.batches.retrieve(batch.id).request_counts or batch.request_counts).completed == 0:  # type: ignore[union-attr]
        time.sleep(0.2)

    cancelling = client_a.batches.cancel(batch.id)
    done = until_ended(client_a, batch.id)

    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    assert done.status == "cancelled" and done.cancelled_at
    output, errors = lines_of(client_a, done.output_file_id), lines_of(client_a, done.error_file_id)
    assert output and len(output) == done.request_counts.completed  # type: ignore[union-attr]
    assert sorted(line["custom_id"] for line in output + errors) == sorted(f"c{i}" for i in range(60))
    assert any(line["error"] and line["error"]["code"] == "batch_cancelled" for line in errors)


def test_another_key_sees_none_of_a_keys_files_or_batches(client_a: OpenAI, client_b: OpenAI) -> None:
    file_id = upload(client_a, [request("x", "mine")])
    batch = client_a.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")

    with pytest.raises(openai.NotFoundError):
        client_b.files.retrieve(file_id)
    with pytest.raises(openai.NotFoundError):
        client_b.files.content(file_id)
    with pytest.raises(openai.NotFoundError):
        client_b.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        client_b.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert file_id not in {f.id for f in client_b.files.list()}
    assert batch.id not in {b.id for b in client_b.batches.list()}
    assert file_id in {f.id for f in client_a.files.list()} and batch.id in {b.id for b in client_a.batches.list()}
