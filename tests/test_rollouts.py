"""Program versions side by side and rollouts, on a stack of their own (a rollout changes what every job gets).

A second version of `qa` is registered in Redis as an optimization would
(core/program_versions.py); the workers load it within a heartbeat.
"""

import asyncio
import hashlib
import json
import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from dspy_jobs_client import Client

from core import program_versions
from harness.processes import ROOT, wait_for
from tests.conftest import Stack, private_stack
from tests.test_jobs import unique, wait_finished

pytestmark = pytest.mark.e2e

KEY_USER = f"dj_user_{uuid.uuid4().hex}"
KEY_OPS = f"dj_ops_{uuid.uuid4().hex}"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def versioned(lm_api_base: str) -> Iterator[Stack]:
    stack = private_stack(lm_api_base, "redis-rollouts")
    stack.extra_env = {
        "API_KEYS": f"user:{digest(KEY_USER)}",
        "API_ADMIN_KEYS": f"ops:{digest(KEY_OPS)}",
        "ROLLOUT_GUARD_INTERVAL_S": "0.5",
    }
    stack.start_services()
    yield stack
    stack.stop()


@pytest.fixture
def ops(versioned: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=versioned.api_url, timeout=30, headers={"Authorization": f"Bearer {KEY_OPS}"}) as c:
        yield c


@pytest.fixture
def user(versioned: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=versioned.api_url, timeout=30, headers={"Authorization": f"Bearer {KEY_USER}"}) as c:
        yield c


def register_version(stack: Stack, note: str, program: str = "qa", demo_answer: str | None = None) -> str:
    """The shipped artifact registered again, as a new version, the way an optimization registers one;
    with `demo_answer`, its first demo answers that."""
    artifact = json.loads((ROOT / "artifacts" / f"{program}.json").read_text())
    artifact["metadata"]["optimizer"] = note
    if demo_answer is not None:
        artifact["generate.predict"]["demos"][0]["answer"] = demo_answer

    async def register() -> str:
        client = aioredis.Redis.from_url(stack.redis_url, decode_responses=True)
        try:
            return await program_versions.register(client, program, artifact, str(artifact["metadata"]["version"]))
        finally:
            await client.aclose()

    return asyncio.run(register())


def version_entry(client: httpx.Client, version: str, program: str = "qa") -> dict[str, Any]:
    found = [v for v in client.get(f"/programs/{program}/versions").json()["versions"] if v["version"] == version]
    return found[0] if found else {}


def wait_loaded(client: httpx.Client, version: str, program: str = "qa") -> None:
    """Until both workers (interactive and bulk) hold the version: each loads it at its next heartbeat."""
    wait_for(
        lambda: len(version_entry(client, version, program).get("loaded_by", [])) == 2,
        30,
        f"workers to load {program} {version}",
    )


def served_versions(client: httpx.Client, n: int, **options: Any) -> list[str]:
    ids = [client.post("/jobs", json={"question": unique("which version?"), **options}).json()["id"] for _ in range(n)]
    return [wait_finished(client, job_id)["program_version"] for job_id in ids]


@pytest.fixture(scope="module")
def second_version(versioned: Stack) -> str:
    version = register_version(versioned, "registered by test_rollouts")
    with httpx.Client(base_url=versioned.api_url, timeout=30, headers={"Authorization": f"Bearer {KEY_OPS}"}) as c:
        wait_loaded(c, version)
    return version


def test_a_registered_version_is_listed_loaded_and_numbered_after_the_artifact(
    ops: httpx.Client, second_version: str
) -> None:
    versions = {v["version"]: v for v in ops.get("/programs/qa/versions").json()["versions"]}

    assert second_version == "2"
    assert versions["1"]["source"] == "artifact" and versions["1"]["role"] == "stable"
    assert versions["1"]["share"] == 100.0
    assert versions["2"]["source"] == "registered" and versions["2"]["role"] is None
    assert versions["2"]["metadata"]["optimizer"] == "registered by test_rollouts"
    assert len(versions["2"]["loaded_by"]) == 2  # both workers


def test_a_canary_sends_its_share_of_jobs_a_callers_key_sticks_and_the_versions_compare(
    ops: httpx.Client, user: httpx.Client, second_version: str
) -> None:
    put = ops.put("/programs/qa/rollout", json={"version": second_version, "percent": 20})
    assert put.status_code == 200, put.text
    n = 100

    got = served_versions(user, n)
    keyed = served_versions(user, 10, rollout_key="user-42")

    on_candidate = got.count(second_version)
    assert set(got) == {"1", second_version}
    assert abs(on_candidate - 0.2 * n) <= 3 * math.sqrt(n * 0.2 * 0.8), on_candidate
    assert len(set(keyed)) == 1
    versions = {v["version"]: v for v in ops.get("/programs/qa/versions").json()["versions"]}
    assert (versions[second_version]["role"], versions[second_version]["share"]) == ("candidate", 20.0)
    assert versions["1"]["share"] == 80.0
    assert versions[second_version]["stats"]["jobs"] >= on_candidate
    assert versions[second_version]["stats"]["failure_rate"] == 0.0
    assert versions[second_version]["stats"]["latency_mean_s"] > 0
    assert user.get("/programs/qa").json()["rollout"] == {"stable": None, "candidate": "2", "percent": 20.0}
    metrics = ops.get("/metrics").text
    assert f'dspy_jobs_version_jobs_total{{program="qa",status="succeeded",version="{second_version}"}}' in metrics


def test_promote_serves_every_job_then_roll_back_restores_the_previous_version(
    ops: httpx.Client, user: httpx.Client, second_version: str
) -> None:
    ops.put("/programs/qa/rollout", json={"version": second_version, "percent": 50})

    promoted = ops.post("/programs/qa/rollout/promote")
    after_promotion = served_versions(user, 20)
    back = ops.post("/programs/qa/rollout/rollback")
    after_rollback = served_versions(user, 20)
    again = ops.post("/programs/qa/rollout/rollback")

    assert promoted.status_code == 200 and promoted.json()["stable"] == second_version
    assert set(after_promotion) == {second_version}
    assert back.status_code == 200 and back.json()["stable"] is None
    assert set(after_rollback) == {"1"}
    assert again.status_code == 409
    actions = [e["action"] for e in ops.get("/programs/qa/rollout").json()["history"]]
    assert actions[-3:] == ["canary", "promote", "rollback"]


def test_a_version_no_worker_holds_a_percent_out_of_range_or_a_users_key_are_refused(
    ops: httpx.Client, user: httpx.Client, second_version: str
) -> None:
    unknown = ops.put("/programs/qa/rollout", json={"version": "77", "percent": 10})
    too_much = ops.put("/programs/qa/rollout", json={"version": second_version, "percent": 101})
    negative = ops.put("/programs/qa/rollout", json={"version": second_version, "percent": -1})
    not_ops = user.put("/programs/qa/rollout", json={"version": second_version, "percent": 10})
    nothing = ops.post("/programs/qa/rollout/promote")
    unknown_program = ops.put("/programs/nope/rollout", json={"version": "1", "percent": 10})

    assert unknown.status_code == 422 and "not loaded by any worker" in unknown.json()["message"]
    assert "'2'" in unknown.json()["message"]
    assert too_much.status_code == 422 and "percent" in too_much.json()["message"]
    assert negative.status_code == 422
    assert not_ops.status_code == 403
    assert nothing.status_code == 409
    assert unknown_program.status_code == 404


def test_a_job_or_batch_pinned_to_a_version_runs_it_and_an_unknown_version_is_422(
    user: httpx.Client, second_version: str
) -> None:
    pinned = served_versions(user, 3, version=second_version)
    refused = user.post("/jobs", json={"question": unique("pinned"), "version": "99"})
    batch = user.post(
        "/programs/qa/batches",
        json={"items": [{"input": {"question": unique("pinned item")}} for _ in range(3)], "version": second_version},
    ).json()
    wait_for(lambda: user.get(f"/batches/{batch['id']}").json()["status"] == "completed", 30, "the pinned batch")
    items = user.get(f"/jobs?batch_id={batch['id']}").json()["data"]

    assert set(pinned) == {second_version}
    assert refused.status_code == 422 and "not loaded by any worker" in refused.json()["message"]
    assert {item["program_version"] for item in items} == {second_version}


def test_the_python_client_runs_a_canary_and_promotes(versioned: Stack, second_version: str) -> None:
    with Client(versioned.api_url, KEY_OPS) as client:
        started = client.start_canary("qa", second_version, 10)
        versions = client.versions("qa")
        promoted = client.promote("qa")
        back = client.rollback("qa")

    assert (started.candidate, started.percent) == (second_version, 10.0)
    assert [v.role for v in versions if v.version == second_version] == ["candidate"]
    assert promoted.stable == second_version and back.stable is None


def test_a_replay_runs_past_inputs_against_a_version_and_compares_them_with_their_corrections(
    ops: httpx.Client, user: httpx.Client, versioned: Stack
) -> None:
    since = datetime.now(UTC).isoformat()
    jobs = [
        wait_finished(
            user, user.post("/programs/triage/jobs", json={"input": {"ticket": unique("replay me")}}).json()["id"]
        )
        for _ in range(5)
    ]
    for job in jobs[:2]:
        assert (
            user.post(
                f"/jobs/{job['id']}/feedback", json={"score": "bad", "correction": {"category": "bug"}}
            ).status_code
            == 201
        )
    candidate = register_version(versioned, "replayed", program="triage")
    wait_loaded(ops, candidate, program="triage")

    started = ops.post("/programs/triage/replays", json={"jobs": {"created_after": since}, "version": candidate})
    assert started.status_code == 202, started.text
    location = started.headers["location"]
    wait_for(lambda: ops.get(location).json()["status"] == "completed", 60, "the replay")
    replay = ops.get(location).json()
    corrected_only = ops.post(
        "/programs/triage/replays",
        json={"jobs": {"created_after": since, "feedback": "corrected"}, "version": candidate},
    ).json()
    untouched = ops.post(
        "/programs/triage/replays", json={"jobs": {"created_after": since, "feedback": "none"}, "version": candidate}
    ).json()
    nothing = ops.post("/programs/triage/replays", json={"jobs": {"created_after": "2999-01-01T00:00:00Z"}})
    by_user = user.post("/programs/triage/replays", json={"jobs": {"created_after": since}})

    assert replay["counts"]["succeeded"] == 5
    assert {item["job_id"] for item in replay["items"]} == {job["id"] for job in jobs}
    assert {(item["baseline_version"], item["candidate_version"]) for item in replay["items"]} == {("1", candidate)}
    summary = replay["summary"]
    # The scripted LM answers a ticket the same way whatever the version: every field the same.
    assert (summary["compared"], summary["identical"], summary["different"]) == (5, 5, 0)
    assert summary["fields"]["category"] == {"same": 5, "different": 0}
    assert summary["corrections"]["items"] == 2 and summary["corrections"]["fields"] == 2
    assert summary["corrections"]["candidate_agrees"] == summary["corrections"]["baseline_agrees"]
    corrected = [item for item in replay["items"] if item["correction"]]
    assert all(item["candidate_agrees"] == {"category": item["candidate"]["category"] == "bug"} for item in corrected)
    # triage has a metric: both answers scored against the reference (the corrected answer where corrected).
    assert summary["metric"]["items"] == 5
    assert all(item["metric"] is not None for item in replay["items"])
    assert len(corrected_only["items"]) == 2 and len(untouched["items"]) == 3
    assert nothing.status_code == 422 and "found 0" in nothing.json()["message"]
    assert by_user.status_code == 403


def test_the_automatic_rule_rolls_back_a_candidate_that_fails_more_than_the_stable_version(
    ops: httpx.Client, user: httpx.Client, versioned: Stack
) -> None:
    toxic = f"toxic{uuid.uuid4().hex[:6]}"
    # Its demo names the word that makes the scripted LM answer garbage to these questions: it fails every one.
    failing = register_version(versioned, "fails", demo_answer=f"Never say {toxic}.")
    wait_loaded(ops, failing)
    rule = {"margin": 0.2, "min_jobs": 5}
    assert (
        ops.put("/programs/qa/rollout", json={"version": failing, "percent": 50, "auto_rollback": rule}).status_code
        == 200
    )

    asked = [
        user.post("/jobs", json={"question": unique(f"tell me [lm:garbage_with={toxic}]")}).json()["id"]
        for _ in range(40)
    ]
    jobs = [wait_finished(user, job_id) for job_id in asked]
    wait_for(lambda: ops.get("/programs/qa/rollout").json()["candidate"] is None, 30, "the automatic rollback")
    after = served_versions(user, 10)

    on_failing = [job for job in jobs if job["program_version"] == failing]
    assert len(on_failing) >= 5 and all(job["error"]["type"] == "AdapterParseError" for job in on_failing)
    event = ops.get("/programs/qa/rollout").json()["history"][-1]
    assert event["action"] == "auto_rollback" and event["version"] == failing
    assert f"version {failing} failed" in event["reason"] and "of version 1" in event["reason"]
    assert set(after) == {"1"}
    stats = version_entry(ops, failing)["stats"]
    assert stats["failure_rate"] == 1.0 and stats["parse_failure_rate"] == 1.0
