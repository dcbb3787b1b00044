"""Feedback on jobs: who may give it, what a correction may say, the summary per version, the page's thumbs.

One stack with API keys (its own redis-server, a worker, the API): alice owns
the jobs, bob is another key, ops an operator's key.
"""

import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from dspy_jobs_client import Client, InvalidRequest

from tests.conftest import Stack, private_stack
from tests.test_jobs import unique, wait_finished

pytestmark = pytest.mark.e2e

KEY_ALICE = f"dj_alice_{uuid.uuid4().hex}"
KEY_BOB = f"dj_bob_{uuid.uuid4().hex}"
KEY_OPS = f"dj_ops_{uuid.uuid4().hex}"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def keyed(lm_api_base: str) -> Iterator[Stack]:
    stack = private_stack(lm_api_base, "redis-feedback")
    stack.extra_env = {
        "API_KEYS": f"alice:{digest(KEY_ALICE)},bob:{digest(KEY_BOB)}",
        "API_ADMIN_KEYS": f"ops:{digest(KEY_OPS)}",
        "FEEDBACK_MAX_PER_JOB": "4",
    }
    stack.start_worker()
    stack.start_api()
    yield stack
    stack.stop()


def client_for(stack: Stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.api_url, timeout=30, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
def alice(keyed: Stack) -> Iterator[httpx.Client]:
    with client_for(keyed, KEY_ALICE) as c:
        yield c


@pytest.fixture
def bob(keyed: Stack) -> Iterator[httpx.Client]:
    with client_for(keyed, KEY_BOB) as c:
        yield c


@pytest.fixture
def ops(keyed: Stack) -> Iterator[httpx.Client]:
    with client_for(keyed, KEY_OPS) as c:
        yield c


def finished_job(client: httpx.Client, question: str = "What is feedback for?") -> dict[str, Any]:
    job = client.post("/jobs", params={"wait": 30}, json={"question": unique(question)}).json()
    return wait_finished(client, job["id"])


def test_the_owner_and_an_operator_give_feedback_and_every_entry_is_kept_with_its_key(
    alice: httpx.Client, ops: httpx.Client
) -> None:
    job = finished_job(alice)

    first = alice.post(f"/jobs/{job['id']}/feedback", json={"score": "bad", "comment": "not what I asked"})
    second = ops.post(f"/jobs/{job['id']}/feedback", json={"score": 0.75, "correction": {"answer": "Paris"}})

    assert first.status_code == 201, first.text
    assert second.status_code == 201, second.text
    entries = second.json()["entries"]
    assert [(e["score"], e["label"], e["key"], e["comment"]) for e in entries] == [
        (0.0, "bad", "alice", "not what I asked"),
        (0.75, None, "ops", None),
    ]
    assert entries[1]["correction"] == {"answer": "Paris"}
    assert entries[0]["at"] <= entries[1]["at"]
    assert second.json()["program_version"] == job["program_version"]
    assert alice.get(f"/jobs/{job['id']}/feedback").json()["entries"] == entries


def test_feedback_on_an_unknown_job_or_another_keys_job_is_404(alice: httpx.Client, bob: httpx.Client) -> None:
    job = finished_job(alice)

    unknown = alice.post(f"/jobs/{uuid.uuid4().hex}/feedback", json={"score": "good"})
    not_bobs = bob.post(f"/jobs/{job['id']}/feedback", json={"score": "good"})

    assert unknown.status_code == 404
    assert not_bobs.status_code == 404
    assert bob.get(f"/jobs/{job['id']}/feedback").status_code == 404
    assert alice.get(f"/jobs/{job['id']}/feedback").json()["entries"] == []


def test_a_correction_naming_a_field_the_program_lacks_or_of_the_wrong_type_is_422_naming_it(
    alice: httpx.Client,
) -> None:
    job = finished_job(alice)

    unknown = alice.post(f"/jobs/{job['id']}/feedback", json={"score": "bad", "correction": {"colour": "red"}})
    wrong_type = alice.post(
        f"/jobs/{job['id']}/feedback", json={"score": "bad", "correction": {"key_concepts": "not a list"}}
    )
    not_allowed = alice.post(
        f"/jobs/{job['id']}/feedback", json={"score": "bad", "correction": {"question_type": "gossip"}}
    )
    out_of_range = alice.post(f"/jobs/{job['id']}/feedback", json={"score": 1.5})

    assert unknown.status_code == 422
    assert "correction.colour" in unknown.json()["message"] and "answer" in unknown.json()["message"]
    assert wrong_type.status_code == 422 and "correction.key_concepts" in wrong_type.json()["message"]
    assert not_allowed.status_code == 422 and "correction.question_type" in not_allowed.json()["message"]
    assert out_of_range.status_code == 422 and "score" in out_of_range.json()["message"]
    assert alice.get(f"/jobs/{job['id']}/feedback").json()["entries"] == []


def test_feedback_waits_for_the_job_to_end_and_a_job_holds_a_bounded_number(alice: httpx.Client) -> None:
    running = alice.post("/jobs", json={"question": unique("slow [lm:delay_s=20]")}).json()
    early = alice.post(f"/jobs/{running['id']}/feedback", json={"score": "good"})
    alice.post(f"/jobs/{running['id']}/cancel")
    job = finished_job(alice)
    answers = [alice.post(f"/jobs/{job['id']}/feedback", json={"score": "good"}).status_code for _ in range(5)]

    assert early.status_code == 409 and "ended" in early.json()["message"]
    assert answers == [201, 201, 201, 201, 409]  # FEEDBACK_MAX_PER_JOB=4


def test_the_summary_per_version_counts_entries_mean_score_and_corrections(
    alice: httpx.Client, ops: httpx.Client
) -> None:
    before = summary_of(ops.get("/programs/triage/feedback").json())
    jobs = [
        wait_finished(alice, alice.post("/programs/triage/jobs", json={"input": {"ticket": unique("t")}}).json()["id"])
        for _ in range(2)
    ]
    version = jobs[0]["program_version"]
    alice.post(f"/jobs/{jobs[0]['id']}/feedback", json={"score": "good"})
    alice.post(f"/jobs/{jobs[1]['id']}/feedback", json={"score": 0.5, "correction": {"urgency": 5}})
    ops.post(f"/jobs/{jobs[1]['id']}/feedback", json={"score": "bad", "correction": {"category": "bug"}})

    after = summary_of(ops.get("/programs/triage/feedback").json())

    gained = {k: after[version][k] - before.get(version, {}).get(k, 0) for k in ("count", "corrections", "sum")}
    assert gained == {"count": 3, "corrections": 2, "sum": 1.5}
    assert after[version]["mean_score"] == pytest.approx(after[version]["sum"] / after[version]["count"], abs=1e-3)
    assert alice.get("/programs/nope/feedback").status_code == 404


def summary_of(body: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {
        v["version"]: {
            "count": v["count"],
            "corrections": v["corrections"],
            "mean_score": v["mean_score"],
            "sum": round(v["mean_score"] * v["count"], 3),
        }
        for v in body["versions"]
    }


def test_jobs_with_feedback_are_listed_by_kind(alice: httpx.Client, bob: httpx.Client) -> None:
    corrected, praised, untouched = (finished_job(alice, "listing by feedback") for _ in range(3))
    alice.post(f"/jobs/{corrected['id']}/feedback", json={"score": "bad", "correction": {"answer": "x"}})
    alice.post(f"/jobs/{praised['id']}/feedback", json={"score": "good"})

    def listed(kind: str, client: httpx.Client = alice) -> set[str]:
        page = client.get("/jobs", params={"program": "qa", "feedback": kind, "limit": 100}).json()
        return {job["id"] for job in page["data"]}

    ours = {corrected["id"], praised["id"], untouched["id"]}
    assert listed("any") & ours == {corrected["id"], praised["id"]}
    assert listed("corrected") & ours == {corrected["id"]}
    assert listed("positive") & ours == {praised["id"]}
    assert listed("any", bob) & ours == set()
    assert alice.get("/jobs", params={"feedback": "any"}).status_code == 422


def test_the_python_client_gives_feedback_and_reads_the_summary(keyed: Stack) -> None:
    with Client(keyed.api_url, KEY_ALICE) as client:
        job = client.submit("qa", question=unique("client feedback"))
        job.result(timeout=30)

        given = job.feedback("bad", comment="wrong", correction={"answer": "right"})
        with pytest.raises(InvalidRequest) as refused:
            job.feedback(0.2, correction={"nope": 1})
        summary = client.feedback_summary("qa")

    assert given.job_id == job.id and given.program_version == job.record.program_version
    assert [(e.label, e.correction, e.key) for e in given.entries] == [("bad", {"answer": "right"}, "alice")]
    assert "correction.nope" in str(refused.value)
    assert job.record.program_version in [v.version for v in summary]
