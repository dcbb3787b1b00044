"""A failover scenario: kill the Redis primary under load, several times, and count what clients lost.

The stack runs on a primary, two replicas and three Sentinels (harness/redis_ha.py),
the scripted LM, one interactive and one bulk worker and one API. Clients
submit jobs at a steady rate (retrying a `503` or a dropped connection with
the same Idempotency-Key, as a client should), follow every fourth job's event
stream (resuming with Last-Event-ID when it drops) and run one batch. Each
round `SIGKILL`s the primary, waits for the Sentinels to promote a replica and
brings the killed server back as a replica. Then every accepted job is read
back. Counted: jobs answered 202 and lost, jobs run twice, streams that lost
or repeated an event or whose tokens differ from the result, seconds of 503,
seconds until completions recover.

Run by tests/test_redis_ha.py (one short run) and by `python -m bench.failover`, which runs it several
times and writes bench/results/failover.md.
"""

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from httpx_sse import connect_sse

from harness.processes import Proc, start_api, start_lm_simulator, start_worker
from harness.redis_ha import DOWN_AFTER_MS, SentinelGroup
from harness.sse_client import keepalive

_TERMINAL = {"succeeded", "failed", "cancelled", "expired"}
_TRANSIENT = (httpx.TransportError,)


def _env(group: SentinelGroup, lm_api_base: str) -> dict[str, str]:
    return {
        **group.env(),
        "LM_MODEL": "openai/simulated",
        "LM_API_BASE": lm_api_base,
        "LM_CACHE": "false",
    }


@dataclass
class Submitted:
    question: str
    stream: bool
    first_try_s: float
    job_id: str | None = None
    accepted_s: float | None = None
    unavailable_s: list[float] = field(default_factory=list)  # when a try got 503 or no answer


@dataclass
class Followed:
    job_id: str
    seqs: list[int] = field(default_factory=list)
    text: dict[str, str] = field(default_factory=dict)  # per output field, as a client builds it
    reconnects: int = 0
    done: bool = False


@dataclass
class Round:
    killed_at_s: float
    promoted_after_s: float
    unavailable_s: float = 0.0  # from the first 503 after the kill to the last
    recovered_after_s: float | None = None  # kill to the first second with completions back at 80 % of the rate


@dataclass
class Report:
    rounds: list[Round]
    accepted: int
    lost: list[str]
    lost_accepted_after_kill_s: list[float]  # for each lost job: when it was accepted, from the kill before it
    unfinished: list[str]
    failed: list[str]
    ran_twice: list[str]
    extra_lm_calls: int
    streams: int
    streams_lost_event: list[str]
    streams_repeated_event: list[str]
    streams_wrong_text: list[str]
    batch_items: int
    batch_counts: dict[str, int]
    workers_kept_serving: bool
    job_after: dict[str, Any]  # the job that checks it: what it ended as, and who ran it
    submit_rate_per_s: float
    down_after_ms: int

    def summary(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "lost": len(self.lost),
            "lost_accepted_after_kill_s": [round(t, 1) for t in self.lost_accepted_after_kill_s],
            "unfinished": len(self.unfinished),
            "failed": len(self.failed),
            "ran_twice": len(self.ran_twice),
            "extra_lm_calls": self.extra_lm_calls,
            "streams": self.streams,
            "streams_lost_event": len(self.streams_lost_event),
            "streams_repeated_event": len(self.streams_repeated_event),
            "streams_wrong_text": len(self.streams_wrong_text),
            "batch": self.batch_counts,
            "promoted_after_s": [round(r.promoted_after_s, 1) for r in self.rounds],
            "unavailable_s": [round(r.unavailable_s, 1) for r in self.rounds],
            "recovered_after_s": [
                None if r.recovered_after_s is None else round(r.recovered_after_s, 1) for r in self.rounds
            ],
            "workers_kept_serving": self.workers_kept_serving,
            "job_after": self.job_after,
        }


class Load:
    def __init__(self, api: str, rate_per_s: float) -> None:
        self.api = api
        self.rate_per_s = rate_per_s
        self.submitted: list[Submitted] = []
        self.followed: list[Followed] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._spawn(self._submit_forever)

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _submit_forever(self) -> None:
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            n += 1
            job = Submitted(f"failover q{n} {uuid.uuid4().hex[:8]}", stream=n % 2 == 0, first_try_s=time.time())
            self.submitted.append(job)
            self._spawn(self._submit, job)
            next_at += 1 / self.rate_per_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _submit(self, job: Submitted) -> None:
        body = {"question": job.question, "stream": job.stream}
        headers = {"Idempotency-Key": job.question}
        with httpx.Client(base_url=self.api, timeout=10) as client:
            while True:
                try:
                    response = client.post("/jobs", json=body, headers=headers)
                except _TRANSIENT:
                    job.unavailable_s.append(time.time())
                    time.sleep(0.2)
                    continue
                if response.status_code == 503:
                    job.unavailable_s.append(time.time())
                    time.sleep(0.2)
                    continue
                response.raise_for_status()
                job.job_id = response.json()["id"]
                job.accepted_s = time.time()
                break
        if job.stream and len(self.submitted) % 4 == 0:
            followed = Followed(job.job_id)
            self.followed.append(followed)
            self._follow(followed)

    def _follow(self, followed: Followed) -> None:
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=self.api, timeout=httpx.Timeout(10, read=30)) as client:
            while not followed.done and time.monotonic() < deadline:
                headers = {"Last-Event-ID": str(followed.seqs[-1])} if followed.seqs else {}
                try:
                    with connect_sse(client, "GET", f"/jobs/{followed.job_id}/events", headers=headers) as source:
                        if source.response.status_code != 200:
                            raise httpx.HTTPStatusError(
                                "retry", request=source.response.request, response=source.response
                            )
                        for sse in source.iter_sse():
                            if keepalive(sse):
                                continue
                            followed.seqs.append(int(sse.id))
                            data = json.loads(sse.data)
                            if sse.event == "status" and data.get("status") == "running":
                                followed.text = {}
                            elif sse.event == "token":
                                followed.text[data["field"]] = followed.text.get(data["field"], "") + data["text"]
                            elif sse.event in ("result", "error"):
                                followed.done = True
                                return
                except (httpx.TransportError, httpx.HTTPStatusError):
                    pass
                followed.reconnects += 1
                time.sleep(0.2)


def _get(client: httpx.Client, path: str) -> httpx.Response:
    for _ in range(50):
        try:
            response = client.get(path)
            if response.status_code != 503:
                return response
        except _TRANSIENT:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"GET {path} kept failing")


def _job_after_the_failovers(client: httpx.Client, timeout_s: float = 60.0) -> dict[str, Any]:
    """A job submitted once the failovers are over, as it stands when it ended or after `timeout_s`;
    `answered` says what the API answered the submission when it was not accepted."""
    response = client.post("/jobs", json={"question": "after the failovers"})
    if response.status_code != 202:
        return {"answered": f"{response.status_code} {response.text[:300]}"}
    job_id = response.json()["id"]
    deadline = time.monotonic() + timeout_s
    while True:
        record: dict[str, Any] = _get(client, f"/jobs/{job_id}").json()
        if record.get("status") in _TERMINAL or time.monotonic() > deadline:
            return record
        time.sleep(0.2)


def _recovered_after(finished: list[float], killed_at: float, rate: float) -> float | None:
    for second in range(1, 60):
        start = killed_at + second
        if sum(1 for t in finished if start <= t < start + 1) >= 0.8 * rate:
            return float(second)
    return None


def run(
    rounds: int = 3,
    rate_per_s: float = 10.0,
    between_s: float = 8.0,
    batch_items: int = 60,
    down_after_ms: int = DOWN_AFTER_MS,
) -> Report:
    group = SentinelGroup.start(down_after_ms=down_after_ms)
    procs: list[Proc] = []
    try:
        lm, lm_api_base = start_lm_simulator("lm-failover", "--ttft-s", "0.1", "--tokens-per-s", "400")
        procs.append(lm)
        env = _env(group, lm_api_base)
        worker = start_worker(env, name="worker-failover")
        bulk = start_worker(env, name="worker-failover-bulk", queues="bulk")
        api_proc, api = start_api(env, name="api-failover")
        procs += [worker, bulk, api_proc]
        client = httpx.Client(base_url=api, timeout=30)
        batch = client.post(
            "/batches",
            json={"items": [{"question": f"failover batch {i}"} for i in range(batch_items)]},
        )
        batch.raise_for_status()
        batch_id = batch.json()["id"]

        load = Load(api, rate_per_s)
        load.start()
        time.sleep(between_s)
        done_rounds: list[Round] = []
        for _ in range(rounds):
            killed_at = time.time()
            old = group.kill_primary()
            group.wait_for_failover(old)
            done_rounds.append(Round(killed_at, time.time() - killed_at))
            group.restart(old)
            time.sleep(between_s)
        load.stop()
        load.join(30)

        # Every accepted job, read back once it has had time to finish.
        finished_at: list[float] = []
        lost: list[str] = []
        unfinished: list[str] = []
        failed: list[str] = []
        ran_twice: list[str] = []
        accepted = [s for s in load.submitted if s.job_id is not None]
        by_id = {s.job_id: s for s in accepted}
        deadline = time.monotonic() + 90
        for job in accepted:
            assert job.job_id is not None
            while True:
                response = _get(client, f"/jobs/{job.job_id}")
                if response.status_code == 404:
                    lost.append(job.job_id)
                    break
                record = response.json()
                if record["status"] in _TERMINAL:
                    if record["status"] != "succeeded":
                        failed.append(job.job_id)
                    if record["attempts"] > 1:
                        ran_twice.append(job.job_id)
                    if record["finished_at"]:
                        finished_at.append(_timestamp(record["finished_at"]))
                    break
                if time.monotonic() > deadline:
                    unfinished.append(job.job_id)
                    break
                time.sleep(0.2)
        # More LM calls than jobs: an accepted job run again, or a try answered 503 (and undone) that a
        # worker had already started.
        calls = httpx.get(lm_api_base.removesuffix("/v1") + "/_requests").json()
        per_question: dict[str, int] = {}
        for call in calls:
            per_question[call["question"]] = per_question.get(call["question"], 0) + 1
        extra_lm_calls = sum(max(0, per_question.get(job.question, 0) - 1) for job in accepted)

        lost_event, repeated, wrong_text = [], [], []
        for followed in load.followed:
            record = _get(client, f"/jobs/{followed.job_id}").json()
            if len(set(followed.seqs)) != len(followed.seqs):
                repeated.append(followed.job_id)
            # A job's events are numbered from 1 without gaps (core/lua/events.lua).
            if not followed.seqs or set(followed.seqs) != set(range(1, max(followed.seqs) + 1)):
                lost_event.append(followed.job_id)
            answer = (record.get("result") or {}).get("answer")
            if not followed.done or followed.text.get("answer", "").strip() != str(answer).strip():
                wrong_text.append(followed.job_id)

        while _get(client, f"/batches/{batch_id}").json()["status"] not in ("completed", "cancelled"):
            if time.monotonic() > deadline + 60:
                break
            time.sleep(0.5)
        batch_counts = _get(client, f"/batches/{batch_id}").json()["counts"]

        for r in done_rounds:
            errors = [t for s in load.submitted for t in s.unavailable_s if t >= r.killed_at_s]
            errors = [t for t in errors if t < r.killed_at_s + between_s]
            r.unavailable_s = (max(errors) - min(errors)) if errors else 0.0
            r.recovered_after_s = _recovered_after(finished_at, r.killed_at_s, rate_per_s)

        # The processes connected before the first failover still serve: a job now, run by the same worker.
        after = _job_after_the_failovers(client)
        # A record names its worker as "<Celery hostname>:<pid>".
        kept = after.get("status") == "succeeded" and str(after.get("worker")).startswith(f"{worker.hostname}:")
        kept = kept and worker.popen.poll() is None
        client.close()
        return Report(
            rounds=done_rounds,
            accepted=len(accepted),
            lost=lost,
            lost_accepted_after_kill_s=[
                _after_kill(by_id[job_id].accepted_s or 0.0, [r.killed_at_s for r in done_rounds]) for job_id in lost
            ],
            unfinished=unfinished,
            failed=failed,
            ran_twice=ran_twice,
            extra_lm_calls=extra_lm_calls,
            streams=len(load.followed),
            streams_lost_event=lost_event,
            streams_repeated_event=repeated,
            streams_wrong_text=wrong_text,
            batch_items=batch_items,
            batch_counts=batch_counts,
            workers_kept_serving=kept,
            job_after={k: after.get(k) for k in ("status", "worker", "attempts", "error", "answered")},
            submit_rate_per_s=rate_per_s,
            down_after_ms=down_after_ms,
        )
    finally:
        for proc in reversed(procs):
            proc.stop()
        group.stop()


def _after_kill(at_s: float, kills: list[float]) -> float:
    before = [k for k in kills if k <= at_s]
    return at_s - max(before) if before else at_s - min(kills)


def _timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
