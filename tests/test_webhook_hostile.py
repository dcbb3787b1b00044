"""Nothing one caller's webhook_url or receiver holds can hurt another's deliveries (issue #25), on the real stack.

Before: a URL that `urlsplit` accepted at submit time and `httpx.URL` refused
at delivery killed the sender task of every worker that claimed it, for
good and silently; and a receiver's gzip reply was read whole, decompressed.
"""

import json
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from core import keys
from harness.processes import Proc, free_port, wait_for
from harness.webhook_receiver import Receiver
from tests.conftest import Stack
from tests.test_jobs import unique, wait_finished
from tests.test_webhooks import WEBHOOK_ENV, delivered, failed, submit, webhook_of

pytestmark = pytest.mark.e2e

# Both were accepted by the submit-time check that parsed with urlsplit (with WEBHOOK_ALLOW_PRIVATE, as here;
# the full-width name resolves to loopback through Python's IDNA 2003 codec), and both made the sender raise.
FULL_WIDTH_LOCALHOST = "".join(chr(ord(c) + 0xFEE0) for c in "localhost")
POISON = {
    "control character": ("http://127.0.0.1:{port}/hook\x01", "Invalid non-printable ASCII character"),
    "IDNA 2003 only": (f"http://{FULL_WIDTH_LOCALHOST}:{{port}}/hook", "Invalid IDNA hostname"),
}


def hooked_stack(make_stack: Callable[..., Stack], **env: str) -> Stack:
    stack = make_stack()
    stack.extra_env.update({**WEBHOOK_ENV, **env})
    return stack


def test_urls_the_sender_could_not_send_are_refused_at_submit_naming_webhook_url(
    make_stack: Callable[..., Stack],
) -> None:
    stack = hooked_stack(make_stack)
    stack.start_api()
    port = free_port()
    with stack.client() as client:
        answers = {
            kind: client.post("/jobs", json={"question": unique("poison"), "webhook_url": url.format(port=port)})
            for kind, (url, _) in POISON.items()
        }

    for kind, answer in answers.items():
        assert answer.status_code == 422, (kind, answer.text)
        detail = answer.json()["detail"][0]
        assert detail["loc"] == ["body", "webhook_url"], kind
        assert "webhook_url is not a valid URL" in detail["msg"] and POISON[kind][1] in detail["msg"], kind
    assert not list(stack.redis().scan_iter("dj:job:*")), "nothing is stored of a refused submission"


def test_poison_deliveries_put_in_redis_end_failed_and_the_good_ones_still_go_out(
    make_stack: Callable[..., Stack],
) -> None:
    stack = hooked_stack(make_stack)
    stack.start_api()
    r = stack.redis()
    with Receiver() as receiver, stack.client() as client:
        # Queued with no worker yet; then, behind the API's back, their receivers become poison.
        poisoned = {kind: submit(client, receiver.url)["id"] for kind in POISON}
        for kind, job_id in poisoned.items():
            r.hset(keys.job(job_id), "webhook_url", POISON[kind][0].format(port=receiver.port))
        # A delivery forged outright, missing what the sender needs to build its body.
        r.hset(keys.webhook("job:forged"), mapping={"url": receiver.url, "ended_at": time.time(), "attempts": 0})
        r.zadd(keys.WEBHOOKS_DUE, {"job:forged": time.time()})
        worker = stack.start_worker()
        states = {kind: webhook_of(client, f"/jobs/{job_id}", failed, 30) for kind, job_id in poisoned.items()}
        good = [submit(client, receiver.url)["id"] for _ in range(3)]
        for job_id in good:
            webhook_of(client, f"/jobs/{job_id}", delivered, 30)
        wait_for(lambda: not r.exists(keys.webhook("job:forged")), 30, "the forged delivery to end")
        ready = client.get("/ready").json()
        metrics = client.get("/metrics").text

    arrived = [json.loads(e.body)["data"]["id"] for e in receiver.received]
    assert sorted(arrived) == sorted(good), "only the good ones arrive"
    log = worker.own_log()
    for kind, job_id in poisoned.items():
        state = states[kind]
        assert state["attempts"] == 1 and state["last_status_code"] is None, kind
        assert "refused: webhook_url is not a valid URL" in state["last_error"], kind
        assert POISON[kind][1] in state["last_error"], kind
        assert f"webhook job:{job_id} to ?: attempt 1 failed (refused: webhook_url is not a valid URL" in log, kind
    # The forged one crashed the sender's attempt three times: each logged with its id, then it ended.
    assert log.count("webhook job:forged: attempt") == 3
    assert "webhook job:forged to 127.0.0.1: attempt 3 failed (the sender failed: KeyError: 'record')" in log
    assert r.zcard(keys.WEBHOOKS_DUE) == 0, "no delivery is left behind"
    assert ready["checks"]["webhooks"] == {worker.hostname: {"status": "ok", "restarts": 0}}
    assert 'dspy_jobs_webhook_senders{status="ok"} 1.0' in metrics
    assert 'dspy_jobs_webhook_deliveries_total{outcome="failed"} 3.0' in metrics
    assert 'dspy_jobs_webhook_deliveries_total{outcome="delivered"} 3.0' in metrics


def memory_kb(proc: Proc) -> dict[str, int]:
    """The process's resident set now (VmRSS) and at its peak so far (VmHWM), in KB."""
    status = Path(f"/proc/{proc.pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


def gzip_bomb(zeros_mb: int) -> bytes:
    """`zeros_mb` MB of zeros, gzipped (about 1 KB per MB), without holding them in memory."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    chunk = bytes(1024 * 1024)
    return b"".join([*(packer.compress(chunk) for _ in range(zeros_mb)), packer.flush()])


def test_a_receiver_answering_a_gzip_bomb_costs_the_worker_no_memory(make_stack: Callable[..., Stack]) -> None:
    bomb = gzip_bomb(200)
    assert len(bomb) < 300_000
    stack = hooked_stack(make_stack)
    worker = stack.start_worker()
    stack.start_api()
    reply = (bomb, {"content-encoding": "gzip"})
    with Receiver() as plain, Receiver(reply=reply) as bombing, stack.client() as client:
        # A first job and delivery warm the worker up (program, LM client, HTTP client).
        webhook_of(client, f"/jobs/{submit(client, plain.url)['id']}", delivered, 30)
        before = memory_kb(worker)
        for job_id in [submit(client, bombing.url)["id"] for _ in range(3)]:
            wait_finished(client, job_id)
            state = webhook_of(client, f"/jobs/{job_id}", delivered, 30)
            assert state["last_status_code"] == 200
        after = memory_kb(worker)

    grown = {name: after[name] - before[name] for name in before}
    print(f"gzip bomb of {len(bomb):,} bytes (200 MB of zeros), 3 deliveries: worker memory {before} -> {after} KB")
    assert len(bombing.received) == 3
    assert grown["VmHWM"] < 8 * 1024, f"the worker's peak memory grew {grown['VmHWM']} KB"
    assert grown["VmRSS"] < 8 * 1024, f"the worker's memory grew {grown['VmRSS']} KB"
