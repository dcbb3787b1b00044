"""Bulk batches on the real stack: counts that add up, ordered results, failures
that stay local, cancellation, limits, and interactive jobs that never wait."""

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from harness.sse_client import keepalive
from tests.conftest import Stack
from tests.test_jobs import expected_result, wait_finished

pytestmark = pytest.mark.e2e

RequestsFor = Callable[[str], list[dict[str, object]]]
TERMINAL = ("completed", "cancelled", "failed", "expired")


def submit_batch(client: httpx.Client, items: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    response = client.post("/batches", json={"items": items, **extra}, timeout=60)
    assert response.status_code == 202, response.text[:500]
    batch: dict[str, Any] = response.json()
    return batch


def wait_batch(client: httpx.Client, batch_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch: dict[str, Any] = client.get(f"/batches/{batch_id}").json()
        assert_counts_add_up(batch)
        if batch["status"] in TERMINAL:
            return batch
        time.sleep(0.2)
    raise TimeoutError(f"batch {batch_id} still {batch['status']}: {batch['counts']}")


def assert_counts_add_up(batch: dict[str, Any]) -> None:
    counts = batch["counts"]
    statuses = ("queued", "running", "succeeded", "failed", "cancelled", "expired")
    assert sum(counts[k] for k in statuses) == counts["total"], counts


def all_results(client: httpx.Client, batch_id: str, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: int | None = 0
    while cursor is not None:
        page = client.get(f"/batches/{batch_id}/results", params={"cursor": cursor, "limit": limit}).json()
        items += page["items"]
        cursor = page["next_cursor"]
    return items


def tag() -> str:
    return uuid.uuid4().hex[:8]


def test_a_batch_of_500_completes_with_counts_that_add_up_and_every_result_in_order(client: httpx.Client) -> None:
    run = tag()
    items = [{"question": f"item {i} of {run}", "custom_id": f"row-{i}"} for i in range(500)]
    submitted = submit_batch(client, items)
    assert submitted["counts"]["total"] == 500
    assert submitted["status"] == "queued"

    batch = wait_batch(client, submitted["id"])

    assert batch["status"] == "completed"
    assert batch["counts"] == {
        "total": 500,
        "queued": 0,
        "running": 0,
        "succeeded": 500,
        "failed": 0,
        "cancelled": 0,
        "expired": 0,
    }
    assert batch["usage"]["completion_tokens"] > 0
    results = all_results(client, batch["id"], limit=37)
    assert [r["index"] for r in results] == list(range(500))
    assert [r["custom_id"] for r in results] == [f"row-{i}" for i in range(500)]
    assert all(r["status"] == "succeeded" for r in results)
    assert results[123]["result"] == expected_result(f"item 123 of {run}")
    download = client.get(f"/batches/{batch['id']}/results.ndjson")
    assert download.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in download.text.splitlines()] == results
    # Each item is a job in its own right.
    assert client.get(f"/jobs/{results[7]['id']}").json()["result"] == expected_result(f"item 7 of {run}")


def test_items_whose_lm_call_fails_end_failed_and_their_neighbours_succeed(client: httpx.Client) -> None:
    run = tag()
    bad = {3, 10, 11}
    items = [{"question": f"{'[lm:status=401] ' if i in bad else ''}item {i} {run}"} for i in range(20)]

    batch = wait_batch(client, submit_batch(client, items)["id"])

    assert batch["status"] == "completed"
    assert batch["counts"]["failed"] == 3 and batch["counts"]["succeeded"] == 17
    results = all_results(client, batch["id"], limit=100)
    assert {r["index"] for r in results if r["status"] == "failed"} == bad
    assert all(r["error"]["type"] == "LMAuthError" for r in results if r["status"] == "failed")


def test_cancel_mid_batch_leaves_nothing_running_and_no_queued_item_ever_runs(
    make_stack: Callable[..., Stack], lm_requests: RequestsFor
) -> None:
    stack = make_stack()
    stack.start_worker(name="worker-bulk", queues="bulk", concurrency=4)
    stack.start_api()
    run = tag()
    questions = [f"slow item {i} {run} [lm:tps=50]" for i in range(200)]
    with stack.client() as client:
        batch_id = submit_batch(client, [{"question": q, "custom_id": f"row-{i}"} for i, q in enumerate(questions)])[
            "id"
        ]
        while client.get(f"/batches/{batch_id}").json()["counts"]["succeeded"] < 8:
            time.sleep(0.1)
        cancelled = client.post(f"/batches/{batch_id}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] in ("cancelling", "cancelled")

        batch = wait_batch(client, batch_id, timeout_s=60)
        results = all_results(client, batch_id, limit=1000)
        time.sleep(1)
        after = client.get(f"/batches/{batch_id}").json()
        never_started = next(r for r in results if r["status"] == "cancelled" and r["attempts"] == 0)
        item = client.get(f"/jobs/{never_started['id']}").json()

    assert batch["status"] == "cancelled"
    assert batch["counts"]["running"] == 0 and batch["counts"]["queued"] == 0
    assert batch["counts"]["cancelled"] > 100
    assert after["counts"] == batch["counts"], "nothing moves after the batch ended"
    # Items that never started still say which row they were, after the batch ended.
    assert [r["custom_id"] for r in results] == [f"row-{i}" for i in range(200)]
    assert item["input"] == {"question": questions[never_started["index"]]}
    for r in results:
        if r["status"] == "cancelled":
            assert lm_requests(questions[r["index"]]) == [], f"cancelled item {r['index']} reached the LM"


def test_an_oversized_batch_is_413_and_nothing_is_stored(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    stack.extra_env = {"BATCH_MAX_ITEMS": "10", "BATCH_MAX_BYTES": "20000"}
    stack.start_api()
    with stack.client() as client:
        too_many = client.post("/batches", json={"items": [{"question": f"q{i}"} for i in range(11)]})
        too_big = client.post("/batches", json={"items": [{"question": "x" * 3000} for _ in range(8)]})

    assert too_many.status_code == 413 and "at most 10" in too_many.json()["detail"]
    assert too_big.status_code == 413 and "20000 bytes" in too_big.json()["detail"]
    r = stack.redis()
    assert r.keys("dj:batch:*") == [] and r.llen("bulk") == 0


def test_both_batch_routes_take_the_batch_body_limit(make_stack: Callable[..., Stack]) -> None:
    """Regression: the page's route (`/programs/{name}/batches`) had the 1 MiB limit of single jobs."""
    stack = make_stack()
    stack.extra_env = {"REQUEST_MAX_BYTES": "5000", "BATCH_MAX_BYTES": "20000"}
    stack.start_api()
    items = [{"question": "x" * 3000} for _ in range(4)]  # over the request limit, under the batch limit
    with stack.client() as client:
        flat = client.post("/batches", json={"items": items})
        typed = client.post("/programs/qa/batches", json={"items": [{"input": item} for item in items]})
        too_big = client.post("/programs/qa/batches", json={"items": [{"input": item} for item in items * 2]})

    assert flat.status_code == 202, flat.text
    assert typed.status_code == 202, typed.text
    assert too_big.status_code == 413 and "20000 bytes" in too_big.json()["detail"]


def test_an_invalid_item_is_422_naming_it_and_nothing_is_stored(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    stack.start_api()
    with stack.client() as client:
        response = client.post("/batches", json={"items": [{"question": "fine"}, {"question": "  "}]})

    assert response.status_code == 422
    assert "items.1.question" in response.json()["message"]
    assert stack.redis().keys("dj:batch:*") == []


def test_interactive_jobs_do_not_wait_for_a_draining_batch(client: httpx.Client) -> None:
    run = tag()
    batch_id = submit_batch(client, [{"question": f"bulk {i} {run} [lm:tps=20]"} for i in range(300)])["id"]
    while client.get(f"/batches/{batch_id}").json()["counts"]["running"] == 0:
        time.sleep(0.1)

    job = client.post("/jobs", params={"wait": 30}, json={"question": f"urgent {run}"}).json()
    batch = client.get(f"/batches/{batch_id}").json()

    assert job["status"] == "succeeded"
    assert job["worker"].startswith("worker-") and not job["worker"].startswith("worker-bulk")
    assert batch["counts"]["queued"] > 100, "the interactive job finished while most of the batch still waited"
    client.post(f"/batches/{batch_id}/cancel")
    wait_batch(client, batch_id, timeout_s=120)


def test_batch_events_report_progress_then_one_done(client: httpx.Client) -> None:
    from httpx_sse import connect_sse

    run = tag()
    batch_id = submit_batch(client, [{"question": f"watch {i} {run} [lm:tps=100]"} for i in range(30)])["id"]
    seen: list[tuple[str, dict[str, Any]]] = []
    with connect_sse(client, "GET", f"/batches/{batch_id}/events") as source:
        for sse in source.iter_sse():
            if not keepalive(sse):
                seen.append((sse.event, json.loads(sse.data)))

    kinds = [kind for kind, _ in seen]
    assert kinds[-1] == "done" and kinds.count("done") == 1
    assert set(kinds[:-1]) <= {"progress"}
    succeeded = [data["counts"]["succeeded"] for _, data in seen]
    assert succeeded == sorted(succeeded) and succeeded[-1] == 30


def test_the_same_idempotency_key_twice_creates_one_batch(client: httpx.Client) -> None:
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"items": [{"question": f"once {tag()}"}]}
    first = client.post("/batches", json=body, headers=headers)
    second = client.post("/batches", json=body, headers=headers)

    assert first.status_code == 202
    assert second.json()["id"] == first.json()["id"]


def test_unknown_batch_is_404(client: httpx.Client) -> None:
    assert client.get(f"/batches/{uuid.uuid4().hex}").status_code == 404
    assert client.get(f"/batches/{uuid.uuid4().hex}/results").status_code == 404


def test_item_results_are_jobs_so_wait_finished_works_on_them(client: httpx.Client) -> None:
    batch_id = submit_batch(client, [{"question": f"single {tag()}"}])["id"]
    wait_batch(client, batch_id)
    assert wait_finished(client, f"{batch_id}-0")["status"] == "succeeded"


def test_retrying_a_batch_runs_exactly_its_failed_items_again_with_their_custom_ids(client: httpx.Client) -> None:
    run = tag()
    # Items 1 and 3: the LM refuses their first call (400, not worth retrying), and answers later ones.
    items = [
        {
            "question": f"retry {run} {i}" + (" [lm:fail_times=1,status=400]" if i in (1, 3) else ""),
            "custom_id": f"c{i}",
        }
        for i in range(5)
    ]
    first = wait_batch(client, submit_batch(client, items)["id"])
    assert first["counts"]["failed"] == 2 and first["counts"]["succeeded"] == 3, first["counts"]

    retried = client.post(f"/batches/{first['id']}/retry", json={"statuses": ["failed"]})
    again = client.post(f"/batches/{first['id']}/retry", json={"statuses": ["failed"]})

    assert retried.status_code == 202, retried.text
    second = retried.json()
    assert again.json()["id"] == second["id"], "retrying twice makes one new batch"
    assert second["retry_of"] == first["id"] and second["counts"]["total"] == 2
    assert client.get(f"/batches/{first['id']}").json()["retried_by"] == second["id"]
    done = wait_batch(client, second["id"])
    results = all_results(client, second["id"], 10)
    assert done["status"] == "completed" and done["counts"]["succeeded"] == 2
    assert [(r["custom_id"], r["status"]) for r in results] == [("c1", "succeeded"), ("c3", "succeeded")]
    listed = client.get("/jobs", params={"batch_id": first["id"], "status": "failed"}).json()
    assert [job["id"] for job in listed["data"]] == [f"{first['id']}-1", f"{first['id']}-3"]


def test_a_batch_still_running_cannot_be_retried_and_one_without_failures_says_so(client: httpx.Client) -> None:
    running = submit_batch(client, [{"question": f"slow {tag()} [lm:delay_s=3]"}])
    assert client.post(f"/batches/{running['id']}/retry").status_code == 409
    done = wait_batch(client, running["id"])

    response = client.post(f"/batches/{done['id']}/retry")

    assert response.status_code == 422 and "no failed, expired items" in response.json()["detail"]
