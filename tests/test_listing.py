"""Listing jobs and batches (GET /jobs, GET /batches): exactly the right ids, newest first, pages that never
repeat or skip, each key its own and an operator's key every key's.

10,000 jobs of two keys are written through the same Redis functions the API and the workers call
(job_create, job_start, job_end), in this process, so the test needs no LM; the API that lists them is a
real one on the same Redis.
"""

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from api.auth import owner_id
from harness.job_data import Made, make_jobs
from harness.processes import Proc, start_api, start_redis

pytestmark = pytest.mark.e2e

JOBS = 10_000
# Jobs were created over the last hour and a half, half a second apart.
START = float(int(time.time()) - JOBS)


def iso(offset_s: float) -> str:
    return datetime.fromtimestamp(START + offset_s, UTC).isoformat()


KEYS = {name: f"dj_{name}_{uuid.uuid4().hex}" for name in ("alice", "bob", "ops")}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def listed(lm_api_base: str) -> Iterator[tuple[str, list[Made]]]:
    redis_proc, url = start_redis("redis-listing")
    assert isinstance(redis_proc, Proc)
    owners = {name: owner_id(bytes.fromhex(digest(KEYS[name]))) for name in ("alice", "bob")}
    made = asyncio.run(make_jobs(url, JOBS, START, owners))
    env = {
        "REDIS_URL": url,
        "LM_MODEL": "openai/simulated",
        "LM_API_BASE": lm_api_base,
        "API_KEYS": f"alice:{digest(KEYS['alice'])},bob:{digest(KEYS['bob'])}",
        "API_ADMIN_KEYS": f"ops:{digest(KEYS['ops'])}",
    }
    api_proc, api = start_api(env, name="api-listing")
    yield api, made
    api_proc.stop()
    redis_proc.stop()


def every_page(api: str, key: str, params: dict[str, Any], limit: int = 100) -> tuple[list[str], int | None]:
    """Every id a listing gives, page after page, and the total the first page gave."""
    ids: list[str] = []
    total = None
    cursor = None
    with httpx.Client(base_url=api, timeout=30, headers={"Authorization": f"Bearer {KEYS[key]}"}) as c:
        while True:
            page = c.get("/jobs", params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})})
            assert page.status_code == 200, page.text
            body = page.json()
            total = body["total"] if total is None else total
            ids += [job["id"] for job in body["data"]]
            cursor = body["next_cursor"]
            if cursor is None:
                return ids, total


def newest_first(made: list[Made]) -> list[str]:
    return [m.id for m in sorted(made, key=lambda m: m.created_at, reverse=True)]


@pytest.mark.parametrize(
    ("key", "params"),
    [
        ("alice", {}),
        ("bob", {"status": "failed"}),
        ("alice", {"status": "succeeded", "program": "triage"}),
        ("alice", {"error": "LMTimeoutError"}),
        ("bob", {"program": "qa", "created_after": iso(1200), "created_before": iso(3000)}),
        ("ops", {"status": "cancelled"}),
        ("ops", {"status": "failed", "error": "AdapterParseError", "program": "qa"}),
    ],
)
def test_filters_give_exactly_the_matching_ids_newest_first_over_pages_that_never_repeat_or_skip(
    listed: tuple[str, list[Made]], key: str, params: dict[str, Any]
) -> None:
    api, made = listed
    after = params.get("created_after")
    before = params.get("created_before")

    def matches(m: Made) -> bool:
        return (
            (key == "ops" or m.owner == key)
            and params.get("status", m.status) == m.status
            and params.get("program", m.program) == m.program
            and params.get("error", m.error) == m.error
            and (after is None or m.created_at >= _ts(after))
            and (before is None or m.created_at <= _ts(before))
        )

    expected = newest_first([m for m in made if matches(m)])
    ids, total = every_page(api, key, params)

    assert ids == expected and len(set(ids)) == len(ids)
    assert total in (len(expected), None)
    assert expected, "a filter that matches nothing proves little"


def _ts(when: str) -> float:
    return datetime.fromisoformat(when).timestamp()


def test_a_key_sees_none_of_the_other_keys_jobs(listed: tuple[str, list[Made]]) -> None:
    api, made = listed
    bobs = {m.id for m in made if m.owner == "bob"}

    ids, _ = every_page(api, "alice", {"status": "queued"})

    assert ids and not bobs & set(ids)


def test_a_cursor_that_was_not_given_is_400(listed: tuple[str, list[Made]]) -> None:
    api, _ = listed
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {KEYS['alice']}"}) as c:
        assert c.get("/jobs", params={"cursor": "not-a-cursor!"}).status_code == 400
