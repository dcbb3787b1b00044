"""API keys, ownership, per-key limits and CORS, on a real stack with keys configured.

One stack (its own redis-server, a worker per queue, the API) serves the key
and ownership tests; limits and CORS get an API of their own without a
worker, so what they submit stays queued and their event streams stay open.
"""

import hashlib
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from api.auth import owner_id
from core import keys
from harness.processes import ROOT, Proc, free_port, start_redis, start_worker, wait_for
from harness.sse_client import read_events
from tests.conftest import Stack
from tests.test_batches import submit_batch, wait_batch
from tests.test_jobs import unique, wait_finished

pytestmark = pytest.mark.e2e

KEY_A = f"dj_alice_{uuid.uuid4().hex}"
KEY_B = f"dj_bob_{uuid.uuid4().hex}"
LM_SECRET = f"sk-lm-{uuid.uuid4().hex}"


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


API_KEYS = f"alice:{sha256(KEY_A)},{sha256(KEY_B)}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def start_api_logging_info(stack: Stack, name: str) -> Proc:
    """The API under uvicorn with its access log on, so a key in a URL would reach the log."""
    port = free_port()
    proc = Proc(
        name,
        [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)],
        stack.env,
    )
    stack.procs.append(proc)
    stack.api_url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{stack.api_url}/health").status_code == 200, 30, name, proc)
    return proc


@pytest.fixture(scope="module")
def keyed(lm_api_base: str) -> Iterator[Stack]:
    redis_proc, url = start_redis("redis-security")
    if redis_proc is None:
        pytest.fail("the security tests need redis-server for a private stack")
    stack = Stack(url, lm_api_base, [redis_proc])
    stack.extra_env = {"API_KEYS": API_KEYS, "LM_API_KEY": LM_SECRET}
    stack.procs.append(start_worker(stack.env, name="worker-security", queues="interactive"))
    stack.procs.append(start_worker(stack.env, name="worker-security-bulk", queues="bulk"))
    start_api_logging_info(stack, "api-security")
    yield stack
    stack.stop()


@pytest.fixture
def alice(keyed: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed.api_url, timeout=30, headers=bearer(KEY_A)) as c:
        yield c


@pytest.fixture
def bob(keyed: Stack) -> Iterator[httpx.Client]:
    # The other way to send a key.
    with httpx.Client(base_url=keyed.api_url, timeout=30, headers={"X-API-Key": KEY_B}) as c:
        yield c


@pytest.fixture
def anonymous(keyed: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed.api_url, timeout=30) as c:
        yield c


SOME_ID = uuid.uuid4().hex
PROTECTED = [
    ("POST", "/jobs"),
    ("GET", f"/jobs/{SOME_ID}"),
    ("GET", f"/jobs/{SOME_ID}/events"),
    ("POST", f"/jobs/{SOME_ID}/cancel"),
    ("DELETE", f"/jobs/{SOME_ID}"),
    ("POST", "/batches"),
    ("GET", f"/batches/{SOME_ID}"),
    ("GET", f"/batches/{SOME_ID}/results"),
    ("GET", f"/batches/{SOME_ID}/results.ndjson"),
    ("GET", f"/batches/{SOME_ID}/events"),
    ("POST", f"/batches/{SOME_ID}/cancel"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/no-such-path"),
]


@pytest.mark.parametrize("method,path", PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
def test_without_a_valid_key_every_endpoint_but_health_is_401(anonymous: httpx.Client, method: str, path: str) -> None:
    body = {"question": "hi"} if method == "POST" else None
    missing = anonymous.request(method, path, json=body)
    wrong = anonymous.request(method, path, json=body, headers=bearer("dj_not_a_key"))
    wrong_header = anonymous.request(method, path, json=body, headers={"X-API-Key": "dj_not_a_key"})

    for response in (missing, wrong, wrong_header):
        assert response.status_code == 401, (response.status_code, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert "needs a key" in missing.json()["detail"] and "Authorization: Bearer" in missing.json()["detail"]
    assert "not valid" in wrong.json()["detail"]
    assert "dj_not_a_key" not in wrong.text


def test_health_the_page_and_the_docs_need_no_key(anonymous: httpx.Client) -> None:
    for path in ("/health", "/", "/static/app.js", "/docs", "/openapi.json"):
        assert anonymous.get(path).status_code == 200, path


def test_a_caller_without_a_key_is_refused_before_its_body_is_read(anonymous: httpx.Client) -> None:
    huge = anonymous.post("/jobs", content=b"x" * (5 * 1024 * 1024), headers={"content-type": "application/json"})

    assert huge.status_code == 401  # not 413: nothing was parsed or counted for a stranger


def test_both_header_forms_are_accepted(alice: httpx.Client, bob: httpx.Client) -> None:
    for client in (alice, bob):
        job = client.post("/jobs", params={"wait": 20}, json={"question": unique("who am I?")})
        assert job.status_code == 200, job.text
        assert job.json()["status"] == "succeeded"


def test_the_key_as_a_query_parameter_works_on_event_streams_only(keyed: Stack, alice: httpx.Client) -> None:
    job_id = alice.post("/jobs", json={"question": unique("streamed to a browser")}).json()["id"]
    with httpx.Client(base_url=keyed.api_url, timeout=30, params={"api_key": KEY_A}) as browser:
        assert browser.get(f"/jobs/{job_id}").status_code == 401
        assert browser.post("/jobs", json={"question": "hi"}).status_code == 401
        received = read_events(browser, job_id)

    assert received.terminal["type"] == "result"


def test_another_keys_job_is_404_on_every_endpoint_and_left_alone(alice: httpx.Client, bob: httpx.Client) -> None:
    job_id = alice.post("/jobs", json={"question": unique("mine [lm:tps=20]")}).json()["id"]

    assert bob.get(f"/jobs/{job_id}").status_code == 404
    assert bob.get(f"/jobs/{job_id}/events").status_code == 404
    assert bob.post(f"/jobs/{job_id}/cancel").status_code == 404
    assert bob.delete(f"/jobs/{job_id}").status_code == 404
    # Exactly the answer for an id that was never issued: nothing tells them apart.
    assert bob.get(f"/jobs/{job_id}").json()["detail"] == f"no job with id {job_id!r} (never issued, or expired)"
    assert wait_finished(alice, job_id)["status"] == "succeeded", "the other key's cancel did nothing"


def test_another_keys_batch_and_its_items_are_404(alice: httpx.Client, bob: httpx.Client) -> None:
    batch_id = submit_batch(alice, [{"question": unique(f"batch item {i}")} for i in range(3)])["id"]
    batch = wait_batch(alice, batch_id)
    assert batch["status"] == "completed"

    for path in ("", "/results", "/results.ndjson", "/events"):
        assert bob.get(f"/batches/{batch_id}{path}").status_code == 404, path
    assert bob.post(f"/batches/{batch_id}/cancel").status_code == 404
    # Items inherit their batch's owner.
    assert bob.get(f"/jobs/{batch_id}-0").status_code == 404
    assert bob.get(f"/jobs/{batch_id}-0/events").status_code == 404
    assert alice.get(f"/jobs/{batch_id}-0").json()["status"] == "succeeded"
    assert len(alice.get(f"/batches/{batch_id}/results").json()["items"]) == 3


def test_idempotency_keys_do_not_cross_api_keys(alice: httpx.Client, bob: httpx.Client) -> None:
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"question": unique("same key, two callers")}
    first = alice.post("/jobs", json=body, headers=headers)
    again = alice.post("/jobs", json=body, headers=headers)
    other = bob.post("/jobs", json=body, headers=headers)

    assert first.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    assert "idempotent-replayed" not in other.headers


def test_records_carry_a_short_owner_id_never_the_key(keyed: Stack, alice: httpx.Client) -> None:
    job_id = alice.post("/jobs", params={"wait": 20}, json={"question": unique("who owns me?")}).json()["id"]

    owner = keyed.redis().hget(keys.job(job_id), "owner")
    assert owner == owner_id(bytes.fromhex(sha256(KEY_A)))
    assert len(owner) == 16 and owner not in sha256(KEY_A)
    assert "owner" not in alice.get(f"/jobs/{job_id}").json()


def test_hash_command_prints_the_digest_to_configure() -> None:
    def run(*args: str, stdin: str = "") -> str:
        done = subprocess.run(
            [sys.executable, "-m", "api.auth", *args], cwd=ROOT, input=stdin, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert run("hash", "s3cret-key").strip() == sha256("s3cret-key")
    assert run("hash", stdin="s3cret-key\n").strip() == sha256("s3cret-key")
    created = run("new", "carol")
    key = created.split("key (give it to the client; it is not stored anywhere): ")[1].split()[0]
    assert f"API_KEYS entry: carol:{sha256(key)}" in created


def test_a_plain_key_in_api_keys_stops_the_api_without_printing_it(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    stack.extra_env = {"API_KEYS": "alice:this-is-a-plain-key-not-a-digest"}
    port = free_port()
    proc = Proc("api-bad-keys", [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port)], stack.env)
    stack.procs.append(proc)
    proc.popen.wait(30)

    assert proc.popen.returncode != 0
    log = proc.tail(60)
    assert "python -m api.auth hash" in log
    assert "this-is-a-plain-key-not-a-digest" not in log


def test_the_page_works_with_a_key_in_a_real_browser(keyed: Stack) -> None:
    import json
    import os
    import shutil
    import signal

    from tests.test_page_browser import BROWSER_DIR, INSTALL, missing_browser_tools

    if missing := missing_browser_tools():
        pytest.fail(f"the browser test needs {', '.join(missing)}: {INSTALL}", pytrace=False)
    node = shutil.which("node")
    assert node is not None
    screenshot = ROOT / "test-artifacts" / "page-with-key.png"
    question = unique("Asked from the page with a key [lm:tps=60]")
    proc = subprocess.Popen(
        [node, str(BROWSER_DIR / "page_key_flow.mjs"), keyed.api_url, KEY_A, question, str(screenshot)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    assert "exception" not in report, report["exception"]

    assert report["without_key"]["state"] == "idle"
    assert "needs an API key" in report["without_key"]["problem"] and "401" in report["without_key"]["problem"]
    assert report["with_key"]["state"] == "done" and report["with_key"]["status"] == "succeeded"
    assert report["with_key"]["answer"] == f"The answer to '{question}' is 42."
    posts = [r for r in report["requests"] if r["method"] == "POST"]
    streams = [r for r in report["requests"] if r["path"].endswith("/events")]
    assert posts[-1]["header_key"] and not posts[-1]["query_key"], "POST sends the key as a header"
    assert streams and all(r["query_key"] for r in streams), "EventSource sends it as ?api_key="
    assert report["key_after_reload"], "the key is kept in localStorage"


# --- Limits and CORS -----------------------------------------------------------


@pytest.fixture(scope="module")
def limited(lm_api_base: str) -> Iterator[Stack]:
    """No worker: submissions stay queued, event streams stay open."""
    redis_proc, url = start_redis("redis-limits")
    if redis_proc is None:
        pytest.fail("the limit tests need redis-server for a private stack")
    stack = Stack(url, lm_api_base, [redis_proc])
    stack.extra_env = {
        "API_KEYS": API_KEYS,
        "KEY_SUBMIT_RATE_PER_S": "0.5",
        "KEY_SUBMIT_BURST": "3",
        "KEY_MAX_SSE_STREAMS": "2",
        "KEY_BATCH_MAX_ITEMS": "5",
        "CORS_ALLOW_ORIGINS": "https://app.example.com, http://localhost:3000",
    }
    stack.start_api()
    yield stack
    stack.stop()


def client_for(stack: Stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.api_url, timeout=30, headers=bearer(key))


def test_submissions_over_the_rate_are_429_with_retry_after_per_key(limited: Stack) -> None:
    with client_for(limited, KEY_A) as a, client_for(limited, KEY_B) as b:
        codes = [a.post("/jobs", json={"question": f"burst {i}"}).status_code for i in range(3)]
        refused = a.post("/jobs", json={"question": "one too many"})
        refused_batch = a.post("/batches", json={"items": [{"question": "also a submission"}]})
        other_key = b.post("/jobs", json={"question": "my own bucket"})

        assert codes == [202, 202, 202]
        assert refused.status_code == 429 and refused_batch.status_code == 429
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 2
        assert "too many submissions" in refused.json()["detail"]
        assert other_key.status_code == 202
        time.sleep(retry_after + 0.1)
        assert a.post("/jobs", json={"question": "after waiting"}).status_code == 202

    r = limited.redis()
    stored = [str(r.hget(k, "input")) for k in r.scan_iter("dj:job:*") if r.type(k) == "hash"]
    assert len(stored) == 5 and not any("one too many" in q for q in stored), "a refused submission was stored"


def test_batch_size_has_a_per_key_limit(limited: Stack) -> None:
    with client_for(limited, KEY_B) as b:
        too_big = b.post("/batches", json={"items": [{"question": f"q{i}"} for i in range(6)]})

    assert too_big.status_code == 413 and "at most 5" in too_big.json()["detail"]


def open_stream(client: httpx.Client, job_id: str) -> tuple[Any, Any]:
    """An open event stream and its context (to close it later)."""
    context = connect_sse(client, "GET", f"/jobs/{job_id}/events")
    source = context.__enter__()
    return context, source


def test_a_key_may_hold_only_so_many_event_streams(limited: Stack) -> None:
    with client_for(limited, KEY_A) as a:
        r = limited.redis()
        r.delete(keys.rate_submit(owner_id(bytes.fromhex(sha256(KEY_A)))))  # a fresh bucket for this test
        job_id = a.post("/jobs", json={"question": "never runs: no worker"}).json()["id"]
        first = open_stream(a, job_id)
        second = open_stream(a, job_id)
        assert first[1].response.status_code == 200 and second[1].response.status_code == 200

        third = a.get(f"/jobs/{job_id}/events")
        assert third.status_code == 429 and "retry-after" in third.headers
        assert "event streams open" in third.json()["detail"]
        with client_for(limited, KEY_B) as b:
            r.delete(keys.rate_submit(owner_id(bytes.fromhex(sha256(KEY_B)))))
            own = b.post("/jobs", json={"question": "bob's"}).json()["id"]
            with connect_sse(b, "GET", f"/jobs/{own}/events") as source:
                assert source.response.status_code == 200, "another key's streams do not count"

        first[0].__exit__(None, None, None)

        def slot_freed() -> bool:
            with a.stream("GET", f"/jobs/{job_id}/events", timeout=5) as response:
                return response.status_code == 200

        # The server frees the slot once it sees the client has gone.
        wait_for(slot_freed, 10, "the closed stream's slot to be freed")
        second[0].__exit__(None, None, None)


def test_cors_allows_the_configured_origins_only_and_never_credentials(limited: Stack) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    with httpx.Client(base_url=limited.api_url, timeout=10) as c:
        allowed = c.options("/jobs", headers={"Origin": "https://app.example.com", **preflight})
        denied = c.options("/jobs", headers={"Origin": "https://evil.example", **preflight})
        actual = c.get("/health", headers={"Origin": "http://localhost:3000"})
        refused = c.get("/metrics", headers={"Origin": "https://app.example.com"})

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in allowed.headers
    assert "access-control-allow-origin" not in denied.headers
    assert actual.headers["access-control-allow-origin"] == "http://localhost:3000"
    # A 401 still carries CORS headers, so the page can tell the user it needs a key.
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "https://app.example.com"


def test_no_cors_headers_without_configured_origins(client: httpx.Client) -> None:
    response = client.get("/health", headers={"Origin": "https://app.example.com"})

    assert "access-control-allow-origin" not in response.headers


def test_a_wildcard_origin_is_refused_at_startup() -> None:
    from pydantic import ValidationError

    from core.settings import Settings

    with pytest.raises(ValidationError, match="explicit origins"):
        Settings(cors_allow_origins="*")


# --- Secrets stay secret ---------------------------------------------------------


def test_no_key_or_lm_secret_in_any_log_record_or_error(keyed: Stack, alice: httpx.Client) -> None:
    # Failures whose messages come from the LM client, a key in a URL, wrong keys.
    failed = alice.post("/jobs", params={"wait": 20}, json={"question": unique("[lm:status=401] refused")}).json()
    garbage = alice.post("/jobs", params={"wait": 20}, json={"question": unique("[lm:garbage] nonsense")}).json()
    assert failed["status"] == "failed" and garbage["status"] == "failed"
    with httpx.Client(base_url=keyed.api_url, timeout=30, params={"api_key": KEY_A}) as browser:
        read_events(browser, failed["id"])
    with httpx.Client(base_url=keyed.api_url, timeout=30) as stranger:
        stranger.get("/ready", headers=bearer(KEY_A + "x"))
        stranger.get(f"/jobs/{failed['id']}/events", params={"api_key": KEY_B + "x"})
        # Not the parameter's name as sent: no key (401), and masked in the access log all the same.
        encoded = stranger.get(f"/jobs/{failed['id']}/events?api%5Fkey={KEY_A}")
        assert encoded.status_code == 401
    time.sleep(1)  # let the processes flush their logs

    secrets = [KEY_A, KEY_B, LM_SECRET]
    for log_file in sorted((ROOT / "test-artifacts").glob("*.log")):
        text = log_file.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"a secret is in {log_file.name}"
    access_log = (ROOT / "test-artifacts" / "api-security.log").read_text(errors="replace")
    assert "api_key=[redacted]" in access_log, "the access log did not show the masked query parameter"

    r = keyed.redis()
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        values: object = None
        if kind == "hash":
            values = r.hgetall(key)
        elif kind == "string":
            values = r.get(key)
        elif kind == "stream":
            values = r.xrange(key)
        elif kind == "list":
            values = r.lrange(key, 0, -1)
        for secret in secrets:
            assert secret not in str(values), f"a secret is in Redis key {key}"
    assert LM_SECRET not in str(failed["error"]) and LM_SECRET not in str(garbage["error"])
