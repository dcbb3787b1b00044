"""The feedback loop, end to end, on the scripted LM: feedback, optimization, replay, canary, promotion, roll back.

The program is `qa` asked questions carrying `[lm:demo=WORD]`: the scripted
LM answers them wrongly ("I do not know.") unless the prompt carries a demo
whose answer names WORD (harness/lm_simulator.py), and the shipped
artifact's demos do not. Users correct the answers; an optimization builds
a candidate whose demos are those corrected answers; it answers right.
"""

import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from harness.lm_simulator import WRONG
from harness.processes import wait_for
from harness.sse_client import read_events
from tests.conftest import Stack, private_stack
from tests.test_jobs import expected_result, wait_finished

pytestmark = pytest.mark.e2e

WORD = f"zebra{uuid.uuid4().hex[:6]}"
ROLLOUT_JOBS = 100
SHARE = 0.2


@pytest.fixture(scope="module")
def loop_stack(lm_api_base: str) -> Iterator[Stack]:
    stack = private_stack(lm_api_base, "redis-feedback-loop")
    stack.start_services()
    yield stack
    stack.stop()


@pytest.fixture
def api(loop_stack: Stack) -> Iterator[httpx.Client]:
    with loop_stack.client() as c:
        yield c


def question(n: int) -> str:
    return f"What does the keeper feed animal {n} ({uuid.uuid4().hex[:6]})? [lm:demo={WORD}]"


def right_answer(asked: str) -> str:
    return str(expected_result(asked)["answer"])


def ask(api: httpx.Client, n: int, **options: Any) -> list[dict[str, Any]]:
    ids = [api.post("/jobs", json={"question": question(i), **options}).json()["id"] for i in range(n)]
    return [wait_finished(api, job_id) for job_id in ids]


def status_of(api: httpx.Client, url: str) -> str:
    """An optimization's status; any answer but 200 fails the test with the answer (a 404 right after the 202
    was a race in reading a batch item's record)."""
    response = api.get(url)
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def is_right(job: dict[str, Any]) -> bool:
    return bool(job["result"]["answer"] == right_answer(job["input"]["question"]))


def judge(api: httpx.Client, jobs: list[dict[str, Any]]) -> None:
    """Users' thumbs on every answer: up when it is right, down when not."""
    for job in jobs:
        assert (
            api.post(f"/jobs/{job['id']}/feedback", json={"score": "good" if is_right(job) else "bad"}).status_code
            == 201
        )


def versions(api: httpx.Client) -> dict[str, dict[str, Any]]:
    return {v["version"]: v for v in api.get("/programs/qa/versions").json()["versions"]}


def test_the_loop_feedback_optimization_replay_canary_promotion_and_roll_back(api: httpx.Client) -> None:
    started = datetime.now(UTC).isoformat()

    # 1. Jobs are served, wrongly; users correct six answers and thumb two down without saying what is right.
    served = ask(api, 8)
    assert [job["result"]["answer"] for job in served] == [WRONG] * 8
    assert {job["program_version"] for job in served} == {"1"}
    for job in served[:6]:
        correction = {"answer": right_answer(job["input"]["question"])}
        given = api.post(f"/jobs/{job['id']}/feedback", json={"score": "bad", "correction": correction})
        assert given.status_code == 201, given.text
    for job in served[6:]:
        api.post(f"/jobs/{job['id']}/feedback", json={"score": "bad", "comment": "wrong, no idea what is right"})

    # 2. An optimization learns from the corrected jobs: the candidate scores higher on the held-out ones.
    body = {"optimizer": "labeled", "trainset": {"created_after": started}, "demos": 3, "holdout": 0.34}
    created = api.post("/programs/qa/optimizations", json=body)
    assert created.status_code == 202, created.text
    location = created.headers["location"]
    events = read_events(api, created.json()["item_id"])
    optimization = api.get(location).json()
    assert optimization["status"] == "succeeded", optimization
    result = optimization["result"]
    assert optimization["examples"] == 6  # the two without a correction teach nothing
    assert (len(result["train_jobs"]), len(result["holdout_jobs"])) == (4, 2)
    assert (result["current_version"], result["candidate_version"]) == ("1", "2")
    assert result["scores"] == {"candidate": 1.0, "current": 0.0}
    phases = [e["data"].get("phase") for e in events.events if e["data"].get("status") == "optimizing"]
    assert {"building", "scoring candidate", "scoring current"} <= set(phases)
    candidate = result["candidate_version"]
    wait_for(lambda: len(versions(api)[candidate]["loaded_by"]) == 2, 30, "both workers to load the candidate")
    assert versions(api)[candidate]["metadata"]["holdout_scores"] == {"candidate": 1.0, "current": 0.0}

    # 3. A replay of the eight past inputs against the candidate: it fixes every one, and agrees with each correction.
    replayed = api.post("/programs/qa/replays", json={"jobs": {"created_after": started}, "version": candidate})
    assert replayed.status_code == 202, replayed.text
    replay_url = replayed.headers["location"]
    wait_for(lambda: api.get(replay_url).json()["status"] == "completed", 60, "the replay")
    replay = api.get(replay_url).json()
    summary = replay["summary"]
    assert summary["compared"] == 8 and summary["fields"]["answer"] == {"same": 0, "different": 8}
    assert summary["corrections"] == {"items": 6, "fields": 6, "candidate_agrees": 6, "baseline_agrees": 0}
    assert all(item["candidate"]["answer"] == right_answer(item["input"]["question"]) for item in replay["items"])

    # 4. A 20 % canary sends about a fifth of new jobs to the candidate; its answers are the right ones.
    canary = api.put("/programs/qa/rollout", json={"version": candidate, "percent": 20})
    assert canary.status_code == 200, canary.text
    rolled = ask(api, ROLLOUT_JOBS)
    judge(api, rolled)
    on_candidate = [job for job in rolled if job["program_version"] == candidate]
    bound = 3 * math.sqrt(ROLLOUT_JOBS * SHARE * (1 - SHARE))
    assert abs(len(on_candidate) - SHARE * ROLLOUT_JOBS) <= bound, len(on_candidate)
    assert all(is_right(job) for job in on_candidate)
    assert not any(is_right(job) for job in rolled if job["program_version"] == "1")
    compared = versions(api)
    assert compared[candidate]["role"] == "candidate" and compared["1"]["role"] == "stable"
    assert compared[candidate]["stats"]["feedback_mean"] == 1.0
    assert compared["1"]["stats"]["feedback_mean"] == 0.0
    assert compared[candidate]["stats"]["failure_rate"] == compared["1"]["stats"]["failure_rate"] == 0.0
    print(
        f"\nloop: held-out {result['scores']}; canary {len(on_candidate)}/{ROLLOUT_JOBS} on {candidate}; "
        f"feedback mean {compared[candidate]['stats']['feedback_mean']} vs {compared['1']['stats']['feedback_mean']}"
    )

    # 5. Promote: every new job gets the candidate. Roll back: every new job gets the version before.
    assert api.post("/programs/qa/rollout/promote").status_code == 200
    promoted = ask(api, 20)
    assert {job["program_version"] for job in promoted} == {candidate} and all(map(is_right, promoted))
    assert api.post("/programs/qa/rollout/rollback").status_code == 200
    rolled_back = ask(api, 20)
    assert {job["program_version"] for job in rolled_back} == {"1"}
    assert not any(map(is_right, rolled_back))


def test_an_optimization_without_usable_examples_is_422_saying_how_many_it_found(api: httpx.Client) -> None:
    started = datetime.now(UTC).isoformat()
    jobs = ask(api, 3)
    api.post(f"/jobs/{jobs[0]['id']}/feedback", json={"score": "bad"})
    api.post(f"/jobs/{jobs[1]['id']}/feedback", json={"score": "bad", "correction": {"answer": "right"}})

    refused = api.post("/programs/qa/optimizations", json={"trainset": {"created_after": started}})

    assert refused.status_code == 422
    assert "found 1 (3 jobs matched)" in refused.json()["message"]


def test_an_optimization_is_cancelled_at_its_next_lm_call_and_registers_nothing(
    api: httpx.Client, loop_stack: Stack
) -> None:
    started = datetime.now(UTC).isoformat()
    slow = [
        wait_finished(
            api, api.post("/jobs", json={"question": f"slow {i} [lm:delay_s=2] [lm:demo={WORD}]"}).json()["id"]
        )
        for i in range(4)
    ]
    for job in slow:
        api.post(f"/jobs/{job['id']}/feedback", json={"score": "good"})
    before = set(versions(api))
    body = {"optimizer": "bootstrap", "trainset": {"created_after": started}, "budget_calls": 100}
    created = api.post("/programs/qa/optimizations", json=body).json()

    # Its first progress event says it is building; cancel then.
    read_events(api, created["item_id"], stop_after=3)
    wait_for(lambda: status_of(api, created["links"]["self"]) == "running", 30, "the optimization to run")
    cancelled = api.post(created["links"]["cancel"])
    final = api.get(created["links"]["self"]).json()

    assert cancelled.status_code == 200 and final["status"] == "cancelled" and final["result"] is None
    # Its worker stops it at its next LM call (each takes 2 s here); it never registers a version.
    bulk = next(proc for proc in loop_stack.procs if proc.name == "worker-bulk")
    stopped = f"optimization {created['item_id']} stopped before an LM call"
    wait_for(lambda: stopped in bulk.own_log(), 30, "the optimization to stop", bulk)
    assert set(versions(api)) == before


def test_an_optimization_past_its_budget_of_lm_calls_fails_saying_so(api: httpx.Client) -> None:
    started = datetime.now(UTC).isoformat()
    jobs = ask(api, 3)
    for job in jobs:
        api.post(f"/jobs/{job['id']}/feedback", json={"score": "bad", "correction": {"answer": "x"}})
    body = {"optimizer": "labeled", "trainset": {"created_after": started}, "budget_calls": 1}

    created = api.post("/programs/qa/optimizations", json=body).json()
    wait_for(lambda: status_of(api, created["links"]["self"]) == "failed", 30, "the optimization to fail")
    failed = api.get(created["links"]["self"]).json()

    assert failed["error"]["type"] == "BudgetExhausted"
    assert "budget of 1 LM calls" in failed["error"]["message"]


# GEPA rewrites instructions, not demos, and the scripted LM reads no instructions: its candidate answers as
# wrongly as the current version. The others carry the corrected answers as demos.
@pytest.mark.parametrize(("optimizer", "candidate_score"), [("bootstrap", 1.0), ("mipro", 1.0), ("gepa", 0.0)])
def test_dspys_optimizers_build_a_candidate_within_the_budget(
    api: httpx.Client, optimizer: str, candidate_score: float
) -> None:
    started = datetime.now(UTC).isoformat()
    for job in ask(api, 6):
        correction = {"answer": right_answer(job["input"]["question"])}
        api.post(f"/jobs/{job['id']}/feedback", json={"score": "bad", "correction": correction})
    body = {"optimizer": optimizer, "trainset": {"created_after": started}, "demos": 2, "budget_calls": 400}

    created = api.post("/programs/qa/optimizations", json=body).json()
    wait_for(lambda: status_of(api, created["links"]["self"]) in ("succeeded", "failed"), 120, "the optimization")
    done = api.get(created["links"]["self"]).json()

    assert done["status"] == "succeeded", done["error"]
    result = done["result"]
    assert 0 < result["lm_calls"] <= 400
    assert result["scores"] == {"candidate": candidate_score, "current": 0.0}
