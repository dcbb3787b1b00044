"""The py-spy profile of the worker and the API under load: each sample's time put in one category."""

import asyncio
import linecache
import re
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench import load
from bench.pyspy import frame_key, raw_stacks
from bench.report import ROOT, CpuSnapshot
from bench.scenarios.common import OURS, OURS_PATH, body_extra, log
from bench.scenarios.stack import Stack, wait_quiet
from harness.processes import ARTIFACTS


@dataclass
class Profile:
    label: str  # under which load
    process: str
    samples: int  # samples of work
    idle_samples: int  # dropped: the last GIL holder blocked in a call that released it
    cpu_per_job_s: float  # the process's CPU seconds per job while profiled
    jobs: int
    self_top: list[tuple[str, float]]  # frame, share of samples
    inclusive_top: list[tuple[str, float]]
    categories: list[tuple[str, float]]  # each sample in exactly one category
    raw_path: Path


def _strip_line(key: str) -> str:
    return re.sub(r":\d+\)$", ")", key)


# Frames under which everything happens: not interesting inclusively.
_ROOTS = (
    "_bootstrap",
    "_bootstrap_inner",
    "run (threading.py)",
    "<module>",
    "run_forever",
    "_run_once",
    "run_until_complete",
    "_run (asyncio/events.py)",
    "(asyncio/runners.py)",
    "worker (concurrent/futures/thread.py)",
    "run (concurrent/futures/thread.py)",
    "body (celery/concurrency/thread.py)",
    "(<frozen runpy>)",
    "(click/core.py)",
    "(uvicorn/main.py)",
    "(uvicorn/server.py)",
    "(uvicorn/_compat.py)",
)


# Where a sample's time goes, for the per-job cost tables. A sample belongs to the
# first category (in order) with a pattern in any frame of its stack; failing
# that, to the first generic one whose pattern is in its innermost frame.
Categories = list[tuple[str, list[str]]]

WORKER_CATEGORIES: Categories = [
    ("DSPy `model_info`: metadata lookup, a full-table scan for a model it does not list", ["model_info ("]),
    ("Celery task events (`EventDispatcher`: one Redis PUBLISH per flush, on its own thread)", ["EventDispatcher"]),
    ("LiteLLM: cost calculation at the end of a stream", ["response_cost_calculator", "completion_cost"]),
    ("LiteLLM: `stream_chunk_builder` (rebuilds the whole response after the stream)", ["stream_chunk_builder"]),
    ("LiteLLM: logging object", ["litellm_logging"]),
    ("openai SDK: SSE decoding + pydantic model per chunk", ["AsyncStream.", "openai/_streaming"]),
    ("LiteLLM: `CustomStreamWrapper` per chunk", ["CustomStreamWrapper", "streaming_handler"]),
    ("LiteLLM / openai SDK: building and sending the request", ["acompletion", "openai/_base_client", "aiohttp/"]),
    ("DSPy native LM engine (lm15): request, HTTP, stream decoding", ["dspy/_vendor/lm15", "lm15_engine"]),
    ("DSPy `StreamListener.receive` per chunk", ["StreamListener.receive"]),
    ("ours: `FieldParser` (the stream split into fields, per chunk)", ["FieldParser.", "_ToParser."]),
    ("ours: token events (`EventWriter`: queue + pipelined EVALSHA)", ["EventWriter.", "JobUpdates.emit"]),
    (
        "ours: `JobUpdates.finish` (whole fields, result, lease, metrics: one script)",
        ["JobUpdates.finish"],
    ),
    ("ours: `JobUpdates.start` (lease, batch check, `running`: one script)", ["JobUpdates.start", "Leases."]),
    ("ours: per-job metrics read from the record (`record_job_outcome`)", ["record_job_outcome"]),
    ("ours: per-job log context", ["job_log_context", "log_context"]),
    (
        "DSPy callbacks (`with_callbacks`)",
        ["_execute_start_callbacks", "_execute_end_callbacks", "_get_on_start_handler"],
    ),
    (
        "DSPy adapter: format (JSON schema per field, every job)",
        ["ChatAdapter.format", "Adapter.format", "Adapter._call_preprocess"],
    ),
    ("DSPy adapter: parse", ["ChatAdapter.parse", "Adapter.parse", "Adapter._call_postprocess"]),
    ("DSPy `apply_sync_streaming`: queue to the Celery thread", ["apply_sync_streaming.<locals>.runner"]),
    (
        "a thread + an event loop per job",
        ["Thread.start", "new_event_loop", "Runner.close", "shutdown_default_executor"],
    ),
    ("anyio thread hops (`to_thread`, `from_thread`)", ["run_async_from_thread", "run_sync_in_worker_thread"]),
    ("DSPy streamify / module call plumbing", ["streamify", "dspy/primitives", "dspy/predict"]),
    ("ours: the rest of the job (worker/, incl. its other Redis calls)", [" (worker/", f" ({ROOT}/worker/"]),
    ("Celery / kombu: consuming, acking, task events", ["celery/", "kombu/"]),
    ("lease renewal, reaper, heartbeat threads", ["_renew_forever", "_reap_forever", "Heartbeat"]),
]
API_CATEGORIES: Categories = [
    ("hub: pub/sub messages (finished jobs for `?wait`, events for SSE)", ["EventHub._read_forever"]),
    ("task message (Celery's `create_task_message`, kombu's envelope)", ["TaskMessages.build"]),
    ("`wait_until_finished` (read record, wait for the finished notice)", ["wait_until_finished", "until_done"]),
    ("`create_job` (record, `queued` event, task message: one script)", ["create_job"]),
    ("idempotency digest", ["idempotency.py"]),
    ("response: `job_from_fields`, serialization", ["job_from_fields", "serialize_response", "jsonable_encoder"]),
    ("request body: parse + validate", ["request_body_to_args", "Request.body", "Request.json", "_get_body"]),
    ("uvicorn HTTP protocol", ["httptools_impl"]),
    ("FastAPI / Starlette routing, middleware, dependencies", ["fastapi/", "starlette/", "body_limit"]),
]
GENERIC_CATEGORIES = [
    ("asyncio event loop (innermost)", "asyncio/"),
    ("threading (innermost)", "threading.py"),
    ("redis-py (innermost)", "redis/"),
    ("DSPy, other (innermost)", "dspy/"),
    ("anyio (innermost)", "anyio/"),
    ("pydantic (innermost)", "pydantic/"),
]


# Innermost frames of a thread that is blocked (having released the GIL), not working.
IDLE_LEAVES = (
    "select (selectors.py",
    "Condition.wait (",
    "Event.wait (",
    "_worker (concurrent/futures/thread.py",
    "Queue.get (",
    "SimpleQueue.get (",
    "_read_from_socket (",
    "sock_recv",
    "time.sleep",
    "_wait_for_tstate_lock",
)
# py-spy shows no frame for a C function, so a thread blocked in one (hiredis's socket read, kombu's
# epoll wait, a SimpleQueue's get, uvloop's loop) has the Python line that called it as its innermost
# frame. Such a line, when it is one of these calls, marks the sample idle too. (Before this, such
# samples passed for work of the frame that waited: a worker's Redis replies counted as its own CPU.)
_BLOCKING_CALL = re.compile(r"\b(recv_into|recv|poll|select|run_until_complete|run_forever|sleep)\(|\.get\(\)")


def _idle(leaf: str) -> bool:
    if any(pattern in leaf for pattern in IDLE_LEAVES):
        return True
    found = re.match(r".* \((.*):(\d+)\)$", leaf)
    return found is not None and bool(_BLOCKING_CALL.search(linecache.getline(found[1], int(found[2]))))


def summarize(
    raw_path: Path, label: str, process: str, cpu_per_job_s: float, jobs: int, categories: Categories
) -> Profile:
    total = idle = 0
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_category: Counter[str] = Counter()
    for raw_frames, n in raw_stacks(raw_path):
        if _idle(raw_frames[-1]):
            idle += n
            continue
        frames = [frame_key(f) for f in raw_frames]
        total += n
        self_counts[frames[-1]] += n
        for frame in {_strip_line(f) for f in frames}:
            if not any(root in frame for root in _ROOTS):
                inclusive[frame] += n
        category = next((name for name, pats in categories if any(p in f for f in raw_frames for p in pats)), None)
        if category is None:
            category = next((name for name, p in GENERIC_CATEGORIES if p in raw_frames[-1]), "other")
        by_category[category] += n
    pct = 100 / max(total, 1)
    return Profile(
        label,
        process,
        total,
        idle,
        cpu_per_job_s,
        jobs,
        [(k, v * pct) for k, v in self_counts.most_common(25)],
        [(k, v * pct) for k, v in inclusive.most_common(40)],
        [(k, v * pct) for k, v in by_category.most_common()],
        raw_path,
    )


async def profile_ours(
    stack: Stack, py_spy: str, system: str, clients: int, duration_s: float, quiet_s: float, label: str, tag: str
) -> list[Profile]:
    assert stack.worker is not None and stack.api is not None
    # One worker process does all the work while it is profiled, so its CPU per job is its own.
    others = stack.workers[1:]
    if others:
        await asyncio.to_thread(stack.consume, False, others)
    try:
        return await _profile(stack, py_spy, system, clients, duration_s, quiet_s, label, tag)
    finally:
        if others:
            await asyncio.to_thread(stack.consume, True, others)


async def _profile(
    stack: Stack, py_spy: str, system: str, clients: int, duration_s: float, quiet_s: float, label: str, tag: str
) -> list[Profile]:
    assert stack.worker is not None and stack.api is not None
    targets = {"worker": stack.worker.pid, "api": stack.api.pid}
    spies: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    roles = {**stack.roles(OURS), "worker": [stack.worker.pid]}
    marks: dict[str, CpuSnapshot] = {}

    def on_mark(what: str) -> None:
        marks[what] = CpuSnapshot.take(roles)
        if what == "start":
            spy_log = (ARTIFACTS / "bench-suite-py-spy.log").open("ab")
            for name, pid in targets.items():
                out = ARTIFACTS / f"bench-suite-{tag}-{name}.pyspy.txt"
                out.unlink(missing_ok=True)
                # --gil: one stack per sample, the thread holding the GIL (Python work).
                # When nobody holds it py-spy reports the last holder, which is then
                # blocked in a call that released it: those samples are dropped (IDLE_LEAVES).
                cmd = [py_spy, "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--gil"]
                cmd += ["--nonblocking", "-o", str(out)]
                try:
                    spies[name] = (subprocess.Popen(cmd, stdout=spy_log, stderr=subprocess.STDOUT), out)
                except OSError as e:  # py-spy vanished (a `uv sync` removes it from .venv): no profile
                    log(f"could not start py-spy: {e}")
        else:
            for popen, _ in spies.values():
                popen.send_signal(signal.SIGINT)

    await asyncio.to_thread(wait_quiet, stack, quiet_s)
    stack.clear_lm()
    run = await load.closed_loop(
        f"profile x{clients}",
        "127.0.0.1",
        stack.api_port,
        OURS_PATH,
        load.classify_job,
        clients,
        3.0,
        duration_s,
        request_timeout_s=75.0,
        drain_s=10.0,
        on_mark=on_mark,
        body_extra=body_extra(system),
    )
    profiles = []
    cpu = marks["end"].since(marks["start"])
    jobs = len(run.ok)
    for name, (popen, out) in spies.items():
        try:
            await asyncio.to_thread(popen.wait, 30)
        except subprocess.TimeoutExpired:
            popen.kill()
            continue
        if out.exists():
            per_job = cpu.roles[name] / jobs if jobs else float("nan")
            categories = WORKER_CATEGORIES if name == "worker" else API_CATEGORIES
            profiles.append(summarize(out, label, name, per_job, jobs, categories))
    await asyncio.to_thread(stack.settle, True)
    stack.clear_lm()
    log(f"profiled {jobs} jobs, {label} ({run.throughput:.1f} jobs/s under py-spy)")
    return profiles
