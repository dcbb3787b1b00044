"""py-spy on the API process while clients connect and while they stream: the shares of the frames on
its per-event, per-client path."""

import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.pyspy import frame_key, raw_stacks
from harness.processes import ARTIFACTS


@dataclass
class Profile:
    samples: int
    self_top: list[tuple[str, float]]
    inclusive: list[tuple[str, float]]
    raw_path: Path


# Frames worth showing inclusively: the per-event, per-client path of the API.
_PROFILE_FRAMES = [
    ("_dispatch", "api/event_hub.py", "hub: one pub/sub message -> every queue (once per event)"),
    ("_offer", "api/event_hub.py", "hub: put into one client's queue"),
    ("_stream_response", "sse_starlette/sse.py", "per client: sse-starlette send loop (all below)"),
    ("_follow", "api/routes/events.py", "per client: our generator"),
    ("wait_for", "asyncio/tasks.py", "per client: asyncio.wait_for around queue.get()"),
    ("get", "asyncio/queues.py", "per client: queue.get() (its own task under wait_for)"),
    ("_sse", "api/routes/events.py", "per client: json.dumps(data) + ServerSentEvent"),
    ("ensure_bytes", "sse_starlette/event.py", "per client: ServerSentEvent.encode()"),
    ("_send_with_timeout", "sse_starlette/sse.py", "per client: anyio.move_on_after + send"),
    ("__enter__", "anyio/_backends/_asyncio.py", "anyio CancelScope enter"),
    ("__exit__", "anyio/_backends/_asyncio.py", "anyio CancelScope exit"),
    ("send", "uvicorn/protocols/http/httptools_impl.py", "uvicorn: chunked framing + transport.write"),
]


def _frame_is(key: str, func: str, path: str) -> bool:
    """`Class.func (path)` or `func (path)`; py-spy names methods with their class."""
    name, _, rest = key.partition(" (")
    return rest == f"{path})" and (name == func or name.endswith(f".{func}"))


_CONNECT_FRAMES = [
    ("job_events", "api/routes/events.py", "the route: Last-Event-ID, EXISTS, building the response"),
    ("solve_dependencies", "fastapi/dependencies/utils.py", "FastAPI dependency injection"),
    ("_follow", "api/routes/events.py", "subscribe, replay, HMGET, then wait"),
    ("subscribe", "api/event_hub.py", "hub.subscribe (wait_for on the confirmation)"),
    ("_replay", "api/routes/events.py", "XRANGE replay"),
    ("_finished_before", "api/routes/events.py", "HMGET status, seq"),
    ("execute_command", "redis/asyncio/client.py", "every Redis command (pool, send, parse)"),
    ("__call__", "sse_starlette/sse.py", "sse-starlette: task group, 4 tasks per connection"),
    ("handle_events", "uvicorn/protocols/http/httptools_impl.py", "uvicorn: reading and parsing requests"),
]


def summarize_profile(raw_path: Path, wanted: list[tuple[str, str, str]] | None = None) -> Profile:
    total = 0
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for raw_frames, n in raw_stacks(raw_path):
        if raw_frames[0].startswith("thread ("):
            # --threads: keep the event loop's thread only; the others (thread pools, our GC-stats
            # writer) mostly wait, and --nonblocking sampling cannot always tell waiting from running.
            if not raw_frames[0].endswith(": MainThread"):
                continue
            raw_frames = raw_frames[1:]
        if not raw_frames:
            continue
        frames = [frame_key(f, line=False) for f in raw_frames]
        total += n
        self_counts[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    pct = 100 / max(total, 1)
    chosen: list[tuple[str, float]] = []
    for func, path, what in _PROFILE_FRAMES if wanted is None else wanted:
        share = sum(v for k, v in inclusive.items() if _frame_is(k, func, path))
        chosen.append((f"`{func}` ({path}): {what}", share * pct))
    return Profile(total, [(k, v * pct) for k, v in self_counts.most_common(25)], chosen, raw_path)


def start_profile(py_spy: str, pid: int, phase: str, native: bool) -> tuple[subprocess.Popen[bytes], Path] | None:
    """`py-spy record` on the API process `pid` until `stop_profile`; None without py-spy."""
    if not py_spy:
        return None
    out = ARTIFACTS / f"sse-bench-api-{phase}.pyspy.txt"
    out.unlink(missing_ok=True)
    cmd = [py_spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--threads"]
    # --native needs to stop the process to unwind C stacks; otherwise sample without pausing it.
    cmd.append("--native" if native else "--nonblocking")
    log = (ARTIFACTS / "sse-bench-py-spy.log").open("ab")
    popen = subprocess.Popen([*cmd, "-o", str(out)], stdout=log, stderr=subprocess.STDOUT)
    time.sleep(0.5)
    return popen, out


def stop_profile(spy: tuple[subprocess.Popen[bytes], Path]) -> Profile | None:
    popen, out = spy
    popen.send_signal(signal.SIGINT)
    try:
        popen.wait(30)
    except subprocess.TimeoutExpired:
        popen.kill()
        return None
    if not out.exists():
        return None
    return summarize_profile(out, _CONNECT_FRAMES if "connect" in out.name else None)
