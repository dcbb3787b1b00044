"""SSE benchmark: LM chunk to client latency, and fan-out to many clients of one job.

    .venv/bin/python -m bench.sse_bench [--clients 100,500,1000,2000,5000,10000] [--py-spy PATH]

Starts everything it needs (a private redis-server, the scripted LM
`stack/lm_simulator.py`, one Celery worker, one API process under uvicorn,
all on 127.0.0.1), runs the scenarios, stops everything, prints a Markdown
report and writes it to `bench/results/sse.md`. No timing is asserted: this
measures, it does not judge. Process logs go to `test-artifacts/bench-*.log`.

How a run is staged so that every client is listening before the first token:
the worker is told to stop consuming its queue (Celery remote control,
`cancel_consumer`), the job is submitted (it waits, `queued`), every client
connects and receives the job's first event (`queued`, replayed from the
Stream, which proves the API has subscribed it to the live channel), and
only then is the worker told to consume again (`add_consumer`).

Times: the LM simulator records the wall-clock time at which it hands each
content chunk to its server (`chunk_times` in `GET /_requests`); each client
records `time.time()` when the bytes of an event arrive; a Redis subscriber
in this process records when each event was published (what the API sees).
Everything runs on one machine, so the clocks agree.

Clients are raw asyncio protocols on uvloop (one socket, a few hundred bytes
of state each), spread over `--client-procs` processes so that the client side
is not one GIL; CPU use of every process is sampled from /proc.

Sections of the report: 1. latency with one client per job; 2. fan-out sweep
(`--clients`, stops at the first N that breaks), then `--hold-clients` on a
short job; 3. py-spy profile of the API at `--profile-at` clients (py-spy
comes with the dev group; `--py-spy PATH` picks another); 4. the same fan-out with
the API's garbage collector timed, as is and tuned (`--gc-compare`); 5. an
in-process microbenchmark of the per-event, per-client code path and of the
changes the report discusses.
"""

import argparse
import array
import asyncio
import bisect
import contextlib
import datetime
import gc
import json
import multiprocessing
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import timeit
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import httpx
import redis
from sse_starlette import ServerSentEvent
from sse_starlette.event import ensure_bytes

from bench.report import command_line as report_command_line
from bench.report import find_py_spy, machine
from bench.report import machine_busy_s as _machine_busy_s
from bench.report import percentile as _percentile
from bench.report import proc_cpu_s as _proc_cpu_s
from bench.report import raise_fd_limit as _raise_fd_limit
from bench.report import versions as report_versions
from core import keys
from core.events import TERMINAL_EVENTS, EventType
from core.queue import make_celery
from core.settings import Settings
from stack.processes import (
    ARTIFACTS,
    ROOT,
    Proc,
    free_port,
    start_api,
    start_lm_simulator,
    start_redis,
    start_worker,
    wait_for,
)
from stack.sse_client import read_events

RESULTS = ROOT / "bench" / "results" / "sse.md"
PACKAGES = ["dspy", "celery", "redis", "fastapi", "uvicorn", "sse-starlette", "starlette", "uvloop", "httptools"]
FIELD_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]")
WITHIN_MS = 0.100
T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Clients (run in child processes)
# --------------------------------------------------------------------------------------------

# sse-starlette writes `id:` then `event:` then `data:` lines; the job's data is
# compact JSON on one line, so these two lines identify an event.
_EVENT_LINES = re.compile(rb"id: (\d+)\r\nevent: (\w+)\r\n")
_TERMINAL = {t.value.encode() for t in TERMINAL_EVENTS}


@dataclass
class SwarmJob:
    """What one client process is asked to do for one run."""

    host: str
    port: int
    job_id: str
    clients: int
    connect_concurrency: int
    connect_timeout_s: float
    stream_timeout_s: float


@dataclass
class SwarmConnected:
    connected: int
    failures: dict[str, int]
    connect_s: float
    cpu_s: float


@dataclass
class SwarmDone:
    # seq -> receive times (one per client that received it)
    times: "dict[int, array.array[float]]"
    complete: int
    failures: dict[str, int]
    last_finish_t: float
    cpu_connected_s: float
    cpu_done_s: float


class _Swarm:
    def __init__(self, n: int, sem: asyncio.Semaphore) -> None:
        self.n = n
        self.sem = sem
        self.times: dict[int, list[float]] = {}
        self.started = 0  # clients that received a first event or failed
        self.finished = 0  # clients that received the terminal event or failed
        self.complete = 0
        self.failures: Counter[str] = Counter()
        self.connect_failures: Counter[str] = Counter()
        self.all_started = asyncio.Event()
        self.all_finished = asyncio.Event()
        self.last_finish_t = 0.0
        self.conns: list[_Client] = []

    def on_started(self) -> None:
        self.sem.release()
        self.started += 1
        if self.started >= self.n:
            self.all_started.set()

    def on_finished(self, reason: str | None) -> None:
        self.finished += 1
        if reason is None:
            self.complete += 1
        else:
            self.failures[reason] += 1
        self.last_finish_t = time.time()
        if self.finished >= self.n:
            self.all_finished.set()


class _Client(asyncio.Protocol):
    """One SSE connection: records when each event id arrives; checks ids are 1..n without gaps."""

    def __init__(self, swarm: _Swarm, request: bytes) -> None:
        self.swarm = swarm
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.status_checked = False
        self.next_seq = 1
        self.gaps = 0
        self.started = False
        self.finished = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buf + data
        if not self.status_checked:
            if b"\r\n" not in buf:
                self.buf = buf
                return
            self.status_checked = True
            status_line = buf.split(b"\r\n", 1)[0]
            if not status_line.startswith(b"HTTP/1.1 200"):
                self.fail(f"HTTP {status_line[9:12].decode(errors='replace')}", connecting=True)
                return
        end = buf.rfind(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return
        self.buf = buf[end + 4 :]
        times = self.swarm.times
        for match in _EVENT_LINES.finditer(buf, 0, end + 4):
            seq = int(match.group(1))
            if seq != self.next_seq:
                self.gaps += 1
            self.next_seq = seq + 1
            bucket = times.get(seq)
            if bucket is None:
                bucket = times[seq] = []
            bucket.append(now)
            if not self.started:
                self.started = True
                self.swarm.on_started()
            if match.group(2) in _TERMINAL:
                self.finish(None if self.gaps == 0 else "event ids had gaps")
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished:
            self.fail("closed before the terminal event", connecting=not self.started)

    def fail(self, reason: str, connecting: bool) -> None:
        if connecting and not self.started:
            self.swarm.connect_failures[reason] += 1
            self.started = True
            self.swarm.on_started()
        self.finish(reason)

    def finish(self, reason: str | None) -> None:
        if self.finished:
            return
        self.finished = True
        self.swarm.on_finished(reason)
        if self.transport is not None:
            self.transport.close()


async def _open(swarm: _Swarm, job: SwarmJob, request: bytes) -> None:
    client = _Client(swarm, request)
    swarm.conns.append(client)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Close with RST: thousands of sockets per run must not sit in TIME_WAIT on ephemeral ports.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, (job.host, job.port))
        await loop.create_connection(lambda: client, sock=sock)
    except OSError as e:
        sock.close()
        client.fail(f"connect: {type(e).__name__}", connecting=True)


async def _run_swarm(job: SwarmJob, conn: Connection) -> SwarmDone:
    cpu0 = time.process_time()
    t0 = time.monotonic()
    sem = asyncio.Semaphore(job.connect_concurrency)
    swarm = _Swarm(job.clients, sem)
    request = (
        f"GET /jobs/{job.job_id}/events HTTP/1.1\r\nHost: {job.host}:{job.port}\r\n"
        "Accept: text/event-stream\r\nUser-Agent: sse-bench\r\n\r\n"
    ).encode()
    tasks: set[asyncio.Task[None]] = set()

    async def connect_all() -> None:
        for _ in range(job.clients):
            await sem.acquire()  # released when the client receives its first event (or fails)
            task = asyncio.create_task(_open(swarm, job, request))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    opener = asyncio.create_task(connect_all())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(swarm.all_started.wait(), job.connect_timeout_s)
    opener.cancel()
    for client in swarm.conns:
        if not client.started:
            client.fail("no first event within the connect timeout", connecting=True)
    for _ in range(job.clients - len(swarm.conns)):
        swarm.connect_failures["never attempted (connect timeout)"] += 1
        swarm.on_started()
        swarm.on_finished("never attempted (connect timeout)")
    cpu_connected = time.process_time() - cpu0
    conn.send(
        SwarmConnected(
            connected=job.clients - sum(swarm.connect_failures.values()),
            failures=dict(swarm.connect_failures),
            connect_s=time.monotonic() - t0,
            cpu_s=cpu_connected,
        )
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(swarm.all_finished.wait(), job.stream_timeout_s)
    for client in swarm.conns:
        client.finish("stream timeout")
    cpu_done = time.process_time() - cpu0
    await asyncio.sleep(0.2)  # let the closes go out
    return SwarmDone(
        times={seq: array.array("d", ts) for seq, ts in swarm.times.items()},
        complete=swarm.complete,
        failures=dict(swarm.failures),
        last_finish_t=swarm.last_finish_t,
        cpu_connected_s=cpu_connected,
        cpu_done_s=cpu_done,
    )


def _run_loop(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result


def _client_process(conn: Connection) -> None:
    _raise_fd_limit()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        job = conn.recv()
        if job is None:
            return
        conn.send(_run_loop(_run_swarm(job, conn)))


# --------------------------------------------------------------------------------------------
# Measuring: CPU of processes, pub/sub observer, matching tokens to LM chunks
# --------------------------------------------------------------------------------------------


def _children(pid: int) -> set[int]:
    """Pids of the direct children of `pid` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
    return found


def _rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        found = re.search(r"^VmRSS:\s*(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
        return int(found.group(1)) / 1024 if found else 0.0
    return 0.0


class CpuSampler(threading.Thread):
    """CPU seconds of each role's processes (and of the whole machine), sampled every `interval_s`."""

    def __init__(self, roles: dict[str, list[int]], interval_s: float = 0.1) -> None:
        super().__init__(daemon=True, name="cpu-sampler")
        self.roles = roles
        self.interval_s = interval_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._halt = threading.Event()

    def snapshot(self) -> tuple[float, dict[str, float]]:
        now = time.time()
        values = {role: sum(_proc_cpu_s(pid) for pid in pids) for role, pids in self.roles.items()}
        values["machine"] = _machine_busy_s()
        values["other"] = values["machine"] - sum(values[role] for role in self.roles)
        return now, values

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append(self.snapshot())
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def _at(self, role: str, t: float) -> float:
        times = [s[0] for s in self.samples]
        i = bisect.bisect_left(times, t)
        if i <= 0:
            return self.samples[0][1][role]
        if i >= len(times):
            return self.samples[-1][1][role]
        (t0, v0), (t1, v1) = self.samples[i - 1], self.samples[i]
        return v0[role] + (v1[role] - v0[role]) * (t - t0) / (t1 - t0)

    def cores(self, role: str, t0: float, t1: float) -> float:
        """Average CPU use in cores (1.0 = one core busy) between t0 and t1."""
        return (self._at(role, t1) - self._at(role, t0)) / max(t1 - t0, 1e-9)

    def seconds(self, role: str, t0: float, t1: float) -> float:
        return self._at(role, t1) - self._at(role, t0)

    def peak_cores(self, role: str, t0: float, t1: float, width_s: float = 1.0) -> float:
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        best = 0.0
        j = 0
        for i, (ti, vi) in enumerate(inside):
            j = max(j, i + 1)
            while j < len(inside) and inside[j][0] - ti < width_s:
                j += 1
            if j >= len(inside):
                break
            tj, vj = inside[j]
            best = max(best, (vj[role] - vi[role]) / (tj - ti))
        return best if best else self.cores(role, t0, t1)


class PublishObserver(threading.Thread):
    """Records when each event of a job is published on its channel (what the API's hub sees)."""

    def __init__(self, redis_url: str, job_id: str) -> None:
        super().__init__(daemon=True, name="publish-observer")
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(keys.job_channel(job_id))
        deadline = time.monotonic() + 5
        while self.pubsub.get_message(timeout=0.5) is None:  # the subscribe confirmation
            if time.monotonic() > deadline:
                raise TimeoutError("no pub/sub subscribe confirmation")
        self.times: dict[int, float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            message = self.pubsub.get_message(timeout=0.2)
            if message and message["type"] == "message":
                now = time.time()
                event = json.loads(message["data"])
                self.times[int(event["seq"])] = now

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.pubsub.close()
        self.client.close()


@dataclass
class Matching:
    """Which LM chunk each token event came from (see `match_tokens`)."""

    chunk_of: dict[int, int]  # token event seq -> index of the last chunk its text comes from
    first_chunk_of: dict[int, int]
    token_events: int
    chunks: int
    merged_events: int  # token events whose text spans more than one chunk
    unmatched_events: int  # token events whose text is not where expected in the LM output
    header_chunks: int  # chunks that are field headers or separators, never sent as tokens
    undelivered_content_chunks: int  # chunks with field text that no token event carries


def match_tokens(chunk_texts: list[str], tokens: list[tuple[int, str, str]]) -> Matching:
    """Align token events (seq, field, text) with the LM's chunks by position in the completion.

    The LM's completion is the concatenation of its chunks; it contains
    `[[ ## field ## ]]` headers. Each field's token events, in order, are
    found one after the other inside that field's region of the completion;
    an event is matched to the chunk holding its *last* character (the newest
    text it carries: the event cannot exist before that chunk was sent). An
    event that carries several chunks (the listener held some back) counts as
    merged; its older chunks waited longer than we report.
    """
    starts: list[int] = []
    offset = 0
    for text in chunk_texts:
        starts.append(offset)
        offset += len(text)
    full = "".join(chunk_texts)
    headers = list(FIELD_HEADER.finditer(full))
    regions: dict[str, tuple[int, int]] = {}
    header_spans: list[tuple[int, int]] = []
    for i, header in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(full)
        regions.setdefault(header.group(1), (header.end(), end))
        header_spans.append((header.start(), header.end()))
    cursor = {name: start for name, (start, _) in regions.items()}
    chunk_of: dict[int, int] = {}
    first_chunk_of: dict[int, int] = {}
    covered: set[int] = set()
    unmatched = merged = 0
    for seq, field_name, text in tokens:
        if field_name not in regions or not text:
            unmatched += 1
            continue
        pos = full.find(text, cursor[field_name], regions[field_name][1])
        if pos < 0:
            unmatched += 1
            continue
        cursor[field_name] = pos + len(text)
        first = bisect.bisect_right(starts, pos) - 1
        last = bisect.bisect_right(starts, pos + len(text) - 1) - 1
        chunk_of[seq], first_chunk_of[seq] = last, first
        covered.update(range(first, last + 1))
        merged += last > first
    header_chunks = undelivered = 0
    for i, text in enumerate(chunk_texts):
        if i in covered:
            continue
        begin = starts[i]
        in_header = any(a <= begin + len(text) - len(text.lstrip()) < b for a, b in header_spans)
        if in_header or not text.strip():
            header_chunks += 1
        else:
            undelivered += 1
    return Matching(
        chunk_of, first_chunk_of, len(tokens), len(chunk_texts), merged, unmatched, header_chunks, undelivered
    )


@dataclass
class Dist:
    n: int
    p50: float
    p99: float
    max: float
    within_100ms: float

    @classmethod
    def of(cls, values: Iterable[float]) -> "Dist":
        ordered = sorted(values)
        if not ordered:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan)
        within = bisect.bisect_right(ordered, WITHIN_MS) / len(ordered)
        return cls(len(ordered), _percentile(ordered, 50), _percentile(ordered, 99), ordered[-1], within)


# --------------------------------------------------------------------------------------------
# Profile (py-spy) of the API process
# --------------------------------------------------------------------------------------------


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


def _frame_key(frame: str) -> str:
    """`func (/abs/.../site-packages/pkg/mod.py:123)` -> `func (pkg/mod.py)`."""
    match = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    func, path = match.groups()
    for marker in ("site-packages/", "lib/python3.11/", "lib/python3.12/", f"{ROOT}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})"


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
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        raw_frames = stack.split(";")
        if raw_frames[0].startswith("thread ("):
            # --threads: keep the event loop's thread only; the others (thread pools, our GC-stats
            # writer) mostly wait, and --nonblocking sampling cannot always tell waiting from running.
            if not raw_frames[0].endswith(": MainThread"):
                continue
            raw_frames = raw_frames[1:]
        if not raw_frames:
            continue
        frames = [_frame_key(f) for f in raw_frames]
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


# --------------------------------------------------------------------------------------------
# Microbenchmark of the API's per-event, per-client path (in this process, no network)
# --------------------------------------------------------------------------------------------

_SEP = "\r\n"


@dataclass
class Item:
    """What a hub that encodes each event once would queue: the SSE frame, ready to write."""

    seq: int
    type: str
    frame: bytes


def _encode_once(event: dict[str, Any]) -> Item:
    data = json.dumps(event["data"], separators=(",", ":"))
    frame = f"id: {event['seq']}{_SEP}event: {event['type']}{_SEP}data: {data}{_SEP}{_SEP}".encode()
    return Item(event["seq"], event["type"], frame)


async def _follow_today(queue: asyncio.Queue[Any]) -> AsyncIterator[ServerSentEvent]:
    """The live loop of api/routes/events.py `_follow`, as it is today (copied, minus the Redis parts)."""
    last = 0
    while True:
        event = await asyncio.wait_for(queue.get(), 30.0)
        if event["seq"] <= last:
            continue
        last = event["seq"]
        yield ServerSentEvent(
            data=json.dumps(event["data"], separators=(",", ":")), event=event["type"], id=str(event["seq"])
        )
        if EventType(event["type"]) in TERMINAL_EVENTS:
            return


@dataclass(frozen=True)
class Variant:
    """One way of running the per-client loop, for the microbenchmark."""

    name: str
    get_timeout: str = "wait_for"  # "wait_for" as today, "if-empty": asyncio.timeout only when it must wait, "none"
    send_timeout: bool = True  # anyio.move_on_after around every send, as sse-starlette's send_timeout does
    batched: bool = False  # everything already queued goes out as one send

    @property
    def today(self) -> bool:
        return self.name == "today"


VARIANTS = [
    Variant("today"),
    Variant("A: encode once in the hub"),
    Variant("A+B: ... and timeout on queue.get only when it must wait", get_timeout="if-empty"),
    Variant("A+C: ... no timeout on queue.get (idle check elsewhere)", get_timeout="none"),
    Variant("A+C+D: ... and no per-send move_on_after", get_timeout="none", send_timeout=False),
    Variant("A+B+E: encode once, timeout if empty, batch", get_timeout="if-empty", batched=True),
    Variant("A+C+D+E: all of it", get_timeout="none", send_timeout=False, batched=True),
]


async def _follow_encoded(queue: asyncio.Queue[Any], variant: Variant) -> AsyncIterator[tuple[bytes, int]]:
    """The live loop over pre-encoded frames: (bytes to send, events in them)."""
    last = 0
    while True:
        item: Item
        if variant.get_timeout == "wait_for":
            item = await asyncio.wait_for(queue.get(), 30.0)
        elif not queue.empty():
            item = queue.get_nowait()
        elif variant.get_timeout == "if-empty":
            async with asyncio.timeout(30.0):
                item = await queue.get()
        else:
            item = await queue.get()
        items = [item]
        while variant.batched and not queue.empty():
            items.append(queue.get_nowait())
        frames = []
        for it in items:
            if it.seq > last:
                last = it.seq
                frames.append(it.frame)
        if frames:
            yield (frames[0] if len(frames) == 1 else b"".join(frames)), len(frames)


async def _wrap(gen: AsyncIterator[T]) -> AsyncIterator[T]:
    """`_events` wraps `_follow` in a second async generator."""
    async for item in gen:
        yield item


async def _microbench_pipeline(variant: Variant, consumers: int, rounds: int, burst: int) -> tuple[float, float]:
    """Seconds per delivery (one event reaching one client's ASGI `send`) for a fan-out variant, and GC's share."""
    queues: list[asyncio.Queue[Any]] = [asyncio.Queue(1024) for _ in range(consumers)]
    remaining = [0]
    round_done = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:  # uvicorn's cost is not in here
        return None

    def delivered(n: int) -> None:
        remaining[0] -= n
        if remaining[0] <= 0:
            round_done.set()

    async def send_timed(chunk: bytes) -> None:
        message = {"type": "http.response.body", "body": chunk, "more_body": True}
        if variant.send_timeout:
            with anyio.move_on_after(30.0):
                await send(message)
        else:
            await send(message)

    async def consumer(queue: asyncio.Queue[Any]) -> None:
        if variant.today:
            async for sse in _wrap(_follow_today(queue)):
                await send_timed(ensure_bytes(sse, _SEP))
                delivered(1)
        else:
            async for frames, n in _wrap(_follow_encoded(queue, variant)):
                await send_timed(ensure_bytes(frames, _SEP))
                delivered(n)

    tasks = [asyncio.create_task(consumer(q)) for q in queues]
    await asyncio.sleep(0)
    seq = 0
    gc_s = [0.0, 0.0]  # total, start of the current collection

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_s[1] = time.perf_counter()
        else:
            gc_s[0] += time.perf_counter() - gc_s[1]

    gc.callbacks.append(on_gc)
    started = time.perf_counter()
    for _ in range(rounds):
        round_done.clear()
        remaining[0] = consumers * burst
        for _ in range(burst):
            seq += 1
            event = {"seq": seq, "type": "token", "data": {"field": "answer", "text": f" w{seq}"}}
            # What the hub puts in each queue: today the parsed dict, proposed the encoded frame.
            item: Any = event if variant.today else _encode_once(event)
            for queue in queues:
                queue.put_nowait(item)
        await round_done.wait()
    elapsed = time.perf_counter() - started
    gc.callbacks.remove(on_gc)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return elapsed / (rounds * consumers * burst), gc_s[0] / elapsed


@dataclass
class Micro:
    components: list[tuple[str, float]]  # (what, µs per call)
    pipelines: list[tuple[str, int, float, float]]  # (variant, burst, µs per delivery, GC share)


def microbenchmark() -> Micro:
    event = {"seq": 57, "type": "token", "data": {"field": "answer", "text": " w31"}}
    data = event["data"]
    sse = ServerSentEvent(data=json.dumps(data, separators=(",", ":")), event="token", id="57")
    frame = ensure_bytes(sse, _SEP)

    def per_call_us(fn: Callable[[], object], number: int = 200_000) -> float:
        return min(timeit.repeat(fn, number=number, repeat=3)) / number * 1e6

    components = [
        (
            "`json.dumps(event['data'])` (in `_sse`, per client)",
            per_call_us(lambda: json.dumps(data, separators=(",", ":"))),
        ),
        (
            "`ServerSentEvent(...)` + `ensure_bytes` -> `.encode()` (per client)",
            per_call_us(lambda: ensure_bytes(ServerSentEvent(data='{"a":1}', event="token", id="57"), _SEP)),
        ),
        (
            "`ensure_bytes(bytes)` of a pre-encoded frame (proposed, per client)",
            per_call_us(lambda: ensure_bytes(frame, _SEP)),
        ),
        (
            "`EventType(event['type']) in TERMINAL_EVENTS` (per client)",
            per_call_us(lambda: EventType("token") in TERMINAL_EVENTS),
        ),
        ("`json.loads(payload)` in the hub (once per event)", per_call_us(lambda: json.loads(json.dumps(event)))),
    ]

    async def async_components() -> list[tuple[str, float]]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        n = 50_000

        async def time_it(body: Callable[[], Awaitable[object]]) -> float:
            started = time.perf_counter()
            for _ in range(n):
                queue.put_nowait(event)
                await body()
            return (time.perf_counter() - started) / n * 1e6

        async def plain() -> object:
            return await queue.get()

        async def with_wait_for() -> object:
            return await asyncio.wait_for(queue.get(), 30.0)

        async def with_timeout() -> object:
            async with asyncio.timeout(30.0):
                return await queue.get()

        async def noop_send() -> None:
            return None

        async def with_move_on_after() -> object:
            queue.get_nowait()
            with anyio.move_on_after(30.0):
                await noop_send()
            return None

        base = await time_it(plain)
        return [
            (
                "`await asyncio.wait_for(queue.get(), 30)` minus plain `await queue.get()`",
                await time_it(with_wait_for) - base,
            ),
            ("`async with asyncio.timeout(30): await queue.get()` minus plain", await time_it(with_timeout) - base),
            (
                "`with anyio.move_on_after(30): await send(...)` (sse-starlette `send_timeout`)",
                await time_it(with_move_on_after),
            ),
        ]

    components += _run_loop(async_components())

    async def pipelines() -> list[tuple[str, int, float, float]]:
        out: list[tuple[str, int, float, float]] = []
        for burst in (1, 5):
            for variant in VARIANTS:
                if burst == 1 and variant.batched:
                    continue  # nothing to batch when one event is queued at a time
                await _microbench_pipeline(variant, 200, 5, burst)  # warm up
                per, gc_share = min([await _microbench_pipeline(variant, 1000, 60 // burst, burst) for _ in range(3)])
                out.append((variant.name, burst, per * 1e6, gc_share))
        return out

    return Micro(components, _run_loop(pipelines()))


# --------------------------------------------------------------------------------------------
# The stack and one run
# --------------------------------------------------------------------------------------------


@dataclass
class Run:
    scenario: str
    clients: int
    tps: float
    job_id: str
    other_before: float = 0.0  # cores used by processes not ours just before the run
    connected: int = 0
    connect_failures: Counter[str] = field(default_factory=Counter)
    connect_s: float = 0.0
    complete: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    matching: Matching | None = None
    lm_stream_s: float = 0.0  # first to last content chunk sent by the LM
    last_delivery_s: float = 0.0  # first chunk sent to the last client finished
    total: Dist | None = None  # chunk sent -> client received
    to_publish: Dist | None = None  # chunk sent -> event published in Redis
    from_publish: Dist | None = None  # event published -> client received
    from_first_chunk: Dist | None = None  # like total, from the first chunk of merged events
    deliveries: int = 0  # events received by clients while the job ran
    cpu: dict[str, tuple[float, float]] = field(default_factory=dict)  # role -> (avg, peak) cores
    api_cpu_s: float = 0.0
    api_gc_s: float | None = None  # API time in garbage collection while streaming (--api-gc stats/freeze)
    api_connect_cpu_s: float = 0.0
    api_rss_before_mb: float = 0.0
    api_rss_connected_mb: float = 0.0  # with every client connected
    connect_profile: Profile | None = None
    words: int = 0
    label: str = ""  # how the API was run, when not as tests run it
    client_cpu_s: float = 0.0
    wall_s: float = 0.0
    profile: Profile | None = None
    note: str = ""
    # Every chunk -> client delay (and from the first chunk of each event), kept for small runs only.
    samples: list[float] = field(default_factory=list, repr=False)
    first_samples: list[float] = field(default_factory=list, repr=False)

    @property
    def api_us_per_delivery(self) -> float:
        return self.api_cpu_s / self.deliveries * 1e6 if self.deliveries else float("nan")

    @property
    def client_us_per_delivery(self) -> float:
        return self.client_cpu_s / self.deliveries * 1e6 if self.deliveries else float("nan")


def question(words: int, tps: float) -> str:
    tag = uuid.uuid4().hex[:8]
    return f"bench {tag} " + " ".join(f"w{i}" for i in range(words)) + f" [lm:tps={tps:g}]"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.procs: list[Proc] = []
        self.client_procs: list[multiprocessing.process.BaseProcess] = []
        self.pipes: list[Connection] = []
        self.redis_url = ""
        self.lm_base = ""
        self.api_url = ""
        self.worker: Proc | None = None
        self.api: Proc | None = None
        self.redis_proc: Proc | None = None
        self.lm: Proc | None = None
        self.sampler: CpuSampler | None = None
        self.http: httpx.Client | None = None
        self.gc_stats: Path | None = None
        self.env: dict[str, str] = {}
        self.api_mode = "off"

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            # A helper that times out (say, a worker that cannot start) does not hand back its process:
            # stop every child of ours that is not accounted for, by pid.
            known = {proc.pid for proc in self.procs} | {p.pid for p in self.client_procs if p.pid is not None}
            for pid in _children(os.getpid()) - known:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGTERM)
            raise

    def _start(self) -> None:
        self.redis_proc, self.redis_url = start_redis("bench-redis")
        if self.redis_proc is None:
            raise RuntimeError("the benchmark needs redis-server on PATH (it measures a private one)")
        self.procs.append(self.redis_proc)
        self.lm, lm_api_base = start_lm_simulator("bench-lm-simulator")
        self.procs.append(self.lm)
        self.lm_base = lm_api_base.removesuffix("/v1")
        self.env = env = {
            "REDIS_URL": self.redis_url,
            "LM_MODEL": "openai/simulated",
            "LM_API_BASE": lm_api_base,
            "LM_CACHE": "false",
            "WORKER_HEARTBEAT_S": "1",
            "API_REDIS_MAX_CONNECTIONS": str(self.args.api_redis_max_connections),
        }
        self.worker = start_worker(env, name="bench-worker", concurrency=4)
        self.procs.append(self.worker)
        self.api, self.api_url = self._start_api(self.args.api_gc)
        self.procs.append(self.api)
        self.http = httpx.Client(base_url=self.api_url, timeout=60)
        self.celery = make_celery(Settings(redis_url=self.redis_url))
        ctx = multiprocessing.get_context("spawn")
        for _ in range(self.args.client_procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_client_process, args=(child,), daemon=True, name="sse-bench-clients")
            proc.start()
            self.client_procs.append(proc)
            self.pipes.append(parent)
        roles = {
            "api": [self.api.pid],
            "worker": [self.worker.pid],
            "redis": [self.redis_proc.pid],
            "lm": [self.lm.pid],
            "clients": [p.pid for p in self.client_procs if p.pid is not None],
            "bench": [os.getpid()],
        }
        self.sampler = CpuSampler(roles)
        self.sampler.start()

    def _start_api(self, gc_mode: str) -> tuple[Proc, str]:
        """`off`: exactly as the tests start it; otherwise the same app through `--serve-api` (see `serve_api`)."""
        self.api_mode = gc_mode
        if gc_mode == "off":
            self.gc_stats = None
            return start_api(self.env, name="bench-api")
        port = free_port()
        self.gc_stats = ARTIFACTS / f"sse-bench-api-gc-{port}.json"
        cmd = [sys.executable, "-m", "bench.sse_bench", "--serve-api", str(port), gc_mode, str(self.gc_stats)]
        proc = Proc("bench-api", cmd, self.env)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, 30, "API", proc)
        return proc, base

    def restart_api(self, gc_mode: str) -> None:
        assert self.api is not None and self.sampler is not None and self.http is not None
        self.procs.remove(self.api)
        self.api.stop()
        self.api, self.api_url = self._start_api(gc_mode)
        self.procs.append(self.api)
        self.http.close()
        self.http = httpx.Client(base_url=self.api_url, timeout=60)
        self.sampler.roles["api"] = [self.api.pid]
        time.sleep(1.0)  # the sampler has seen the new process before a run starts

    def api_gc_s(self) -> float | None:
        if self.gc_stats is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            seconds: float = json.loads(self.gc_stats.read_text())["seconds"]
            return seconds
        return None

    def stop(self) -> None:
        try:
            if self.sampler is not None:
                self.sampler.stop()
            for pipe in self.pipes:
                with contextlib.suppress(OSError):
                    pipe.send(None)
            for client_proc in self.client_procs:
                client_proc.join(5)
                if client_proc.is_alive():
                    client_proc.kill()
            if self.http is not None:
                self.http.close()
        finally:
            for proc in reversed(self.procs):
                try:
                    proc.stop()
                except Exception as e:  # stop the others anyway
                    print(f"[sse-bench] could not stop {proc.name}: {e}", file=sys.stderr)

    # -- gate: the worker holds off the job until every client listens ------------------------------

    def _consumer(self, add: bool) -> None:
        assert self.worker is not None and self.worker.hostname is not None
        control = self.celery.control
        call = control.add_consumer if add else control.cancel_consumer
        replies = call("interactive", destination=[self.worker.hostname], reply=True, timeout=5)
        if not replies:
            raise RuntimeError(f"worker {self.worker.hostname} did not answer {'add' if add else 'cancel'}_consumer")

    # -- one job, `clients` listeners ------------------------------------------------------------------

    def wait_quiet(self) -> float:
        """Wait (at most --quiet-wait-s) until processes other than ours use < 0.3 cores; returns that load."""
        assert self.sampler is not None
        deadline = time.monotonic() + self.args.quiet_wait_s
        while True:
            t0 = time.time()
            time.sleep(1.0)
            other = self.sampler.cores("other", t0, time.time() - 0.1)
            if other < 0.3 or time.monotonic() > deadline:
                return other

    def run(self, scenario: str, clients: int, tps: float, words: int, profile: bool = False) -> Run:
        assert self.http is not None and self.sampler is not None and self.api is not None
        other_before = self.wait_quiet()
        wall0 = time.monotonic()
        self._consumer(add=False)
        text = question(words, tps)
        response = self.http.post("/jobs", json={"question": text})
        response.raise_for_status()
        job_id: str = response.json()["id"]
        result = Run(scenario, clients, tps, job_id, other_before=other_before, words=words)
        if self.api_mode != "off":
            result.label = f"gc: {self.api_mode}"
        result.api_rss_before_mb = _rss_mb(self.api.pid)
        observer = PublishObserver(self.redis_url, job_id)
        observer.start()
        host, port = self.api_url.removeprefix("http://").split(":")
        procs = min(len(self.pipes), max(1, clients // 50))
        shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        api_cpu_connect0 = self.sampler.snapshot()[1]["api"]
        spy = self._start_profile("connect") if profile else None
        for pipe, share in zip(self.pipes, shares, strict=False):
            pipe.send(
                SwarmJob(
                    host,
                    int(port),
                    job_id,
                    share,
                    self.args.connect_concurrency,
                    connect_timeout_s=30 + clients / 100,
                    stream_timeout_s=self.args.stream_timeout_s,
                )
            )
        connected = [cast(SwarmConnected, self._recv(pipe, 60 + clients / 50)) for pipe in self.pipes[:procs]]
        result.api_connect_cpu_s = self.sampler.snapshot()[1]["api"] - api_cpu_connect0
        result.api_rss_connected_mb = _rss_mb(self.api.pid)
        if spy is not None:
            result.connect_profile = self._stop_profile(spy)
        result.connected = sum(c.connected for c in connected)
        result.connect_s = max(c.connect_s for c in connected)
        for c in connected:
            result.connect_failures.update(c.failures)
        spy = self._start_profile("stream") if profile else None
        gc0 = self.api_gc_s()
        gate_t = time.time()
        self._consumer(add=True)
        done = [cast(SwarmDone, self._recv(pipe, self.args.stream_timeout_s + 60)) for pipe in self.pipes[:procs]]
        end_t = max(d.last_finish_t for d in done)
        gc1 = self.api_gc_s()
        if gc0 is not None and gc1 is not None:
            result.api_gc_s = gc1 - gc0
        if spy is not None:
            result.profile = self._stop_profile(spy)
        time.sleep(0.3)  # the last publishes reach the observer; the sampler passes end_t
        observer.stop()
        for d in done:
            result.failures.update(d.failures)
        result.complete = sum(d.complete for d in done)
        result.client_cpu_s = sum(d.cpu_done_s - c.cpu_s for d, c in zip(done, connected, strict=True))
        self._measure(result, text, done, observer.times, gate_t, end_t)
        result.wall_s = time.monotonic() - wall0
        time.sleep(1.0)  # let the API tear the closed streams down before the next run
        return result

    def _recv(self, pipe: Connection, timeout_s: float) -> object:
        if not pipe.poll(timeout_s):
            raise TimeoutError(f"a client process did not answer within {timeout_s:.0f}s")
        return pipe.recv()

    def _measure(
        self, result: Run, text: str, done: list[SwarmDone], published: dict[int, float], gate_t: float, end_t: float
    ) -> None:
        assert self.http is not None and self.sampler is not None
        sent = [r for r in httpx.get(f"{self.lm_base}/_requests").json() if r["question"] == text]
        if len(sent) != 1 or not sent[0]["chunk_times"]:
            result.note = f"expected one streamed LM request for the job, found {len(sent)}"
            return
        chunk_times: list[float] = sent[0]["chunk_times"]
        chunk_texts: list[str] = sent[0]["chunk_texts"]
        reference = read_events(self.http, result.job_id).events
        tokens = [(e["seq"], e["data"]["field"], e["data"]["text"]) for e in reference if e["type"] == "token"]
        matching = match_tokens(chunk_texts, tokens)
        result.matching = matching
        send_t = {seq: chunk_times[i] for seq, i in matching.chunk_of.items()}
        first_send_t = {seq: chunk_times[i] for seq, i in matching.first_chunk_of.items()}
        total: list[float] = []
        from_publish: list[float] = []
        from_first: list[float] = []
        for d in done:
            for seq, times in d.times.items():
                t_sent = send_t.get(seq)
                if t_sent is None:
                    continue
                t_pub = published.get(seq)
                for t in times:
                    total.append(t - t_sent)
                    from_first.append(t - first_send_t[seq])
                    if t_pub is not None:
                        from_publish.append(t - t_pub)
        if result.clients <= 10:
            result.samples, result.first_samples = total, from_first
        result.deliveries = sum(len(ts) for d in done for seq, ts in d.times.items() if seq > 1)
        result.total = Dist.of(total)
        result.from_first_chunk = Dist.of(from_first)
        result.from_publish = Dist.of(from_publish)
        result.to_publish = Dist.of(published[seq] - t for seq, t in send_t.items() if seq in published)
        start_t = chunk_times[0]
        result.lm_stream_s = chunk_times[-1] - start_t
        result.last_delivery_s = end_t - start_t
        for role in ("api", "clients", "worker", "redis", "lm", "machine", "other"):
            result.cpu[role] = (self.sampler.cores(role, start_t, end_t), self.sampler.peak_cores(role, start_t, end_t))
        result.api_cpu_s = self.sampler.seconds("api", gate_t, end_t)

    # -- py-spy -------------------------------------------------------------------------------------

    def _start_profile(self, phase: str) -> tuple[subprocess.Popen[bytes], Path] | None:
        assert self.api is not None
        spy = self.args.py_spy
        if not spy:
            return None
        out = ARTIFACTS / f"sse-bench-api-{phase}.pyspy.txt"
        out.unlink(missing_ok=True)
        cmd = [spy, "record", "--pid", str(self.api.pid), "--rate", "200", "--format", "raw", "--threads"]
        # --native needs to stop the process to unwind C stacks; otherwise sample without pausing it.
        cmd.append("--native" if self.args.py_spy_native else "--nonblocking")
        log = (ARTIFACTS / "sse-bench-py-spy.log").open("ab")
        popen = subprocess.Popen([*cmd, "-o", str(out)], stdout=log, stderr=subprocess.STDOUT)
        time.sleep(0.5)
        return popen, out

    def _stop_profile(self, spy: tuple[subprocess.Popen[bytes], Path]) -> Profile | None:
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


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}" if seconds == seconds else "-"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.1f} %" if fraction == fraction else "-"


def versions() -> list[tuple[str, str]]:
    return report_versions(PACKAGES)


def command_line() -> str:
    return report_command_line("bench.sse_bench")


def _incomplete(run: Run) -> str:
    return (
        f"- N={run.clients}: {run.clients - run.complete} clients incomplete: {_failures(run.failures)} "
        f"(of which while connecting, before a first event: {_failures(run.connect_failures)})"
    )


def _failures(counter: Counter[str]) -> str:
    return "; ".join(f"{n} {reason}" for reason, n in counter.most_common()) or "none"


def report(
    args: argparse.Namespace,
    started: datetime.datetime,
    latency: list[Run],
    fanout: list[Run],
    hold: list[Run],
    gc_runs: list[Run],
    skipped: list[str],
    micro: Micro | None,
    duration_s: float,
) -> str:
    lines: list[str] = []
    add = lines.append
    add("# SSE benchmark: chunk-to-client latency and fan-out")
    add("")
    add(f"- Command: `cd {ROOT} && {command_line()}`")
    add(f"- Date: {started.strftime('%Y-%m-%d %H:%M:%S %Z')} (took {duration_s:.0f} s)")
    for name, value in machine():
        add(f"- {name}: {value}")
    add("- Packages: " + ", ".join(f"{n} {v}" for n, v in versions()))
    add(
        f"- Stack: private redis-server, the scripted LM (`stack/lm_simulator.py`), 1 Celery worker "
        f"(threads pool), 1 API process (`uvicorn api.main:app`, uvloop + httptools when installed, "
        f"`API_REDIS_MAX_CONNECTIONS={args.api_redis_max_connections}`), all on 127.0.0.1. Clients: raw asyncio "
        f"sockets on uvloop in {args.client_procs} separate process(es), at most {args.connect_concurrency} "
        f"connections being set up at once per process."
    )
    add(
        f"- Every job: the `qa` program (ChainOfThought: reasoning, answer, key_concepts, question_type) on a "
        f"{args.words}-word question, so about {2 * args.words + 12} token events; the LM streams one word per chunk."
    )
    add("")
    add("Delays are measured from the moment the LM simulator hands a chunk to its HTTP server to the moment the")
    add("client's socket delivers the bytes of the matching `token` event. *chunk → publish* is the worker's share")
    add("(LiteLLM, DSPy's StreamListener, the Lua append), *publish → client* the API's share (pub/sub hub, the")
    add("per-client generator, sse-starlette, uvicorn, the kernel), observed by a Redis subscriber in the bench.")
    add("")

    add("## 1. Chunk-to-client latency (one client per job)")
    add("")
    add(
        "| job | tokens/s | token events | LM chunks | merged | chunk → client p50 / p99 / max (ms) "
        "| chunk → publish p50 / p99 (ms) | publish → client p50 / p99 (ms) | other load (cores) |"
    )
    add("|---|---|---|---|---|---|---|---|---|")
    for i, run in enumerate(latency, 1):
        m, t, tp, fp = run.matching, run.total, run.to_publish, run.from_publish
        if m is None or t is None or tp is None or fp is None:
            add(f"| {i} | {run.tps:g} | - | - | - | {run.note or 'failed'} | | | |")
            continue
        add(
            f"| {i} | {run.tps:g} | {m.token_events} | {m.chunks} | {m.merged_events} "
            f"| {_ms(t.p50)} / {_ms(t.p99)} / {_ms(t.max)} | {_ms(tp.p50)} / {_ms(tp.p99)} "
            f"| {_ms(fp.p50)} / {_ms(fp.p99)} | {max(run.cpu['other'][0], 0.0):.2f} |"
        )
    for tps in sorted({r.tps for r in latency}):
        runs = [r for r in latency if r.tps == tps and r.matching is not None]
        pooled = Dist.of(d for r in runs for d in r.samples)  # every token event of every job at this rate
        if pooled.n:
            add(
                f"| **all at {tps:g}/s** | {tps:g} | {pooled.n} | | | **{_ms(pooled.p50)} / {_ms(pooled.p99)} / "
                f"{_ms(pooled.max)}** | | | |"
            )
    add("")
    matchings = [r.matching for r in latency if r.matching is not None]
    if matchings:
        m0 = matchings[0]
        add(
            f"How tokens were matched to chunks: the LM's completion is the concatenation of its chunks and "
            f"contains a `[[ ## field ## ]]` header before each field. Each field's token events, in order, are "
            f"located one after the other inside that field's part of the completion, and an event is matched to "
            f"the chunk holding its last character (the newest text it carries; it cannot exist before that "
            f"chunk was sent). Per job here: {m0.chunks} chunks, of which {m0.header_chunks} are field headers or "
            f"the blank line before them (DSPy's StreamListener holds back any chunk that could be the start of "
            f"`[[ ## name ## ]]` until it knows, then drops the header; the worker skips the empty chunk it "
            f"yields; ordinary words cannot start a header and are passed on at once); {m0.token_events} token "
            f"events; {sum(m.merged_events for m in matchings)} events over all jobs carried more than one chunk, "
            f"{sum(m.unmatched_events for m in matchings)} could not be placed, "
            f"{sum(m.undelivered_content_chunks for m in matchings)} content chunks reached no client. So each "
            f"token event is exactly one LM chunk, the listener adds no buffering delay for ordinary words, and "
            f"the delays above are the whole path. With merged events the delay of their older chunks would be "
            f"longer than reported; *from the first chunk* covers that case "
            f"(p99 {_ms(Dist.of(d for r in latency for d in r.first_samples).p99)} ms here)."
        )
    add("")

    add("## 2. Fan-out: N clients on one job, one API process")
    add("")
    add(
        f"One job per N, streamed at {args.tps:g} tokens/s ({args.words}-word question). *Complete* = the client "
        f"received every event id from 1 to the terminal one without a gap. Delays are over every token delivery "
        f"(N x token events). CPU is in cores (1.0 = one core fully busy), averaged from the first chunk to the "
        f"last client done (*peak* = busiest 1-second window); the machine has {os.cpu_count()} cores and one "
        f"Python process can use at most 1.0. *Other load* = CPU the machine spent outside this benchmark's "
        f"processes (the machine is shared; before each run the bench waits up to {args.quiet_wait_s:g} s for "
        f"that to drop below 0.3 cores). *API µs/delivery* = the API's CPU seconds while streaming / events "
        f"delivered (all clients); *ms/connect* = its CPU while the clients connected / clients; *RSS* = the "
        f"API's resident memory with every client connected (and per connection)."
    )
    add("")
    lines.extend(_fanout_table(fanout))
    add("")
    for run in [r for r in fanout if r.failures or r.connect_failures]:
        add(_incomplete(run))
    for note in skipped:
        add(f"- {note}")
    add("")
    if hold:
        add(
            f"Holding many connections: the same measurement with {hold[0].clients} clients on a short job "
            f"({hold[0].words}-word question, {hold[0].matching.token_events if hold[0].matching else '?'} token "
            f"events), to separate how many connections one process can hold from how many deliveries per second "
            f"it can make."
        )
        add("")
        lines.extend(_fanout_table(hold))
        add("")
        for run in [r for r in hold if r.failures or r.connect_failures]:
            add(_incomplete(run))
        add("")
    add(_fanout_verdict(fanout, hold, args))
    add("")

    profiled = next((r for r in [*fanout, *hold] if r.profile or r.connect_profile), None)
    if profiled is not None:
        add(f"## 3. Where the API process spends its CPU (py-spy, N={profiled.clients})")
        add("")
        mode = "--native" if args.py_spy_native else "--nonblocking"
        add(
            f"`py-spy record --rate 200 --threads {mode}` on the API process, once while the clients connect and "
            f"once from the moment the worker may start to the last client done. Shares are of the samples in "
            f"which the event loop's thread (MainThread) was on CPU. Raw stacks: "
            f"`test-artifacts/sse-bench-api-{{connect,stream}}.pyspy.txt`. Time in C (uvloop's loop, socket "
            f"writes, the garbage collector) is charged to the innermost Python "
            f"frame: `Runner.run` is uvloop's own loop (callbacks, epoll, reads), and a collection triggered by "
            f"an allocation is charged to the frame that allocated (e.g. `_ensure_future`, which creates the "
            f"Task of every `asyncio.wait_for`)."
        )
        add("")
        if profiled.profile is not None:
            prof = profiled.profile
            add(f"While streaming ({prof.samples} samples), inclusive:")
            add("")
            add("| frame | share |")
            add("|---|---|")
            for name, share in prof.inclusive:
                add(f"| {name} | {share:.1f} % |")
            add("")
            add("While streaming, self time (top 15):")
            add("")
            add("| frame | self |")
            add("|---|---|")
            for name, share in prof.self_top[:15]:
                add(f"| `{name}` | {share:.1f} % |")
            add("")
        if profiled.connect_profile is not None:
            prof = profiled.connect_profile
            add(f"While {profiled.clients} clients connect ({prof.samples} samples), inclusive:")
            add("")
            add("| frame | share |")
            add("|---|---|")
            for name, share in prof.inclusive:
                add(f"| {name} | {share:.1f} % |")
            add("")
            add("While connecting, self time (top 12):")
            add("")
            add("| frame | self |")
            add("|---|---|")
            for name, share in prof.self_top[:12]:
                add(f"| `{name}` | {share:.1f} % |")
            add("")

    if profiled is None:
        add("## 3. Where the API process spends its CPU")
        add("")
        add("Not profiled: py-spy was not found. Install it anywhere (`pip install py-spy`) and pass `--py-spy PATH`.")
        add("")

    if gc_runs:
        add("## 4. Garbage collection in the API process")
        add("")
        add(
            "The same app and the same job as section 2, but the API started through "
            "`python -m bench.sse_bench --serve-api PORT MODE FILE`, which imports `api.main:app`, times every "
            "collection with `gc.callbacks` and runs it with `uvicorn.run` (same defaults as the CLI). *gc: stats* "
            "changes nothing else; *gc: tuned* adds `gc.freeze()` after the imports and "
            "`gc.set_threshold(50_000, 20, 100)` (default 700, 10, 10). *API GC* = time in collections / the API's "
            "CPU time while streaming."
        )
        add("")
        lines.extend(_fanout_table(gc_runs))
        add("")

    if micro is not None:
        add("## 5. The per-event, per-client path in isolation (microbenchmark, this process, uvloop)")
        add("")
        add("| operation | µs per call |")
        add("|---|---|")
        for name, us in micro.components:
            add(f"| {name} | {us:.2f} |")
        add("")
        add(
            "The whole fan-out loop without network: 1000 consumers; the hub's work (one `put_nowait` per queue) "
            "plus each client's generator(s), encoding and a no-op ASGI `send` wrapped as sse-starlette wraps it. "
            "*burst* = events already queued when a client wakes up (1 = keeping up; 5 = fallen behind). "
            "*GC* = share of the time spent in the garbage collector (gc.callbacks)."
        )
        add("")
        add("| variant | burst | µs per delivery | GC | deliveries/s per core | clients at 20 tokens/s per core |")
        add("|---|---|---|---|---|---|")
        for variant, burst, us, gc_share in micro.pipelines:
            add(f"| {variant} | {burst} | {us:.2f} | {_pct(gc_share)} | {1e6 / us:,.0f} | {1e6 / us / 20:,.0f} |")
        add("")
        add(
            "*today* = a copy of `_follow`'s live loop (`asyncio.wait_for(queue.get(), 30)`, `_sse` "
            "re-encoding the JSON and building a `ServerSentEvent` per client, `EventType(...)` per event, two "
            "nested async generators, `anyio.move_on_after(send_timeout)` around every send as sse-starlette "
            "does). **A** = the hub formats each event's SSE frame once and queues bytes (`ensure_bytes` "
            "passes bytes through). **B** = `get_nowait()` when the queue is not empty, `asyncio.timeout` only "
            "when it must wait. **C** = no timeout around `queue.get()` at all (the 30 s idle check done once "
            "per channel by the hub instead, e.g. a marker put in every queue of a silent channel). **D** = no "
            "per-send `move_on_after` (`send_timeout=None`; slow clients caught another way, e.g. one sweeper "
            "task). **E** = everything already queued goes out as one `send`. uvicorn's own per-send work "
            "(httptools chunk framing, `transport.write`, the syscall) is not in these numbers; the "
            "end-to-end *API µs/delivery* in section 2 includes it."
        )
        add("")
    return "\n".join(lines) + "\n"


def _fanout_table(runs: list[Run]) -> list[str]:
    out = [
        "| N | connect all (s) | complete | chunk → client p50 / p99 / max (ms) | ≤ 100 ms | publish → client p99 "
        "(ms) | LM stream / last client done (s) | deliveries/s | API CPU avg / peak | API µs/delivery | API GC "
        "| clients CPU (µs/delivery) | worker / redis CPU | other load | API RSS (MB, per conn) | API ms/connect |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        t, fp = run.total, run.from_publish
        if t is None or fp is None:
            out.append(f"| {run.clients} {run.label} | {run.connect_s:.1f} | {run.complete} | {run.note} |||||||||||||")
            continue
        cpu = run.cpu
        gc_share = _pct(run.api_gc_s / run.api_cpu_s) if run.api_gc_s is not None and run.api_cpu_s else "-"
        per_conn_kb = (run.api_rss_connected_mb - run.api_rss_before_mb) * 1024 / max(run.connected, 1)
        out.append(
            f"| {run.clients} {run.label} | {run.connect_s:.1f} | {run.complete} "
            f"| {_ms(t.p50)} / {_ms(t.p99)} / {_ms(t.max)} | {_pct(t.within_100ms)} | {_ms(fp.p99)} "
            f"| {run.lm_stream_s:.1f} / {run.last_delivery_s:.1f} "
            f"| {run.deliveries / max(run.last_delivery_s, 1e-9):,.0f} "
            f"| {cpu['api'][0]:.2f} / {cpu['api'][1]:.2f} | {run.api_us_per_delivery:.0f} | {gc_share} "
            f"| {cpu['clients'][0]:.2f} ({run.client_us_per_delivery:.0f}) "
            f"| {cpu['worker'][0]:.2f} / {cpu['redis'][0]:.2f} | {max(cpu['other'][0], 0.0):.2f} "
            f"| {run.api_rss_connected_mb:.0f} ({per_conn_kb:.0f} KB) "
            f"| {run.api_connect_cpu_s / max(run.connected, 1) * 1e3:.1f} |"
        )
    return out


def _fanout_verdict(fanout: list[Run], hold: list[Run], args: argparse.Namespace) -> str:
    good = [
        r for r in fanout if r.total is not None and r.complete == r.clients and r.total.p99 <= WITHIN_MS and not r.note
    ]
    measured = [r for r in fanout if r.total is not None]
    if not measured:
        return "No fan-out run produced measurements."
    best = max(good, key=lambda r: r.clients) if good else None
    parts = []
    if best is not None and best.total is not None:
        parts.append(
            f"**Largest N with every client complete and p99 ≤ 100 ms: {best.clients}** "
            f"(p99 {_ms(best.total.p99)} ms, API at {best.cpu['api'][0]:.2f} cores)."
        )
    else:
        parts.append("**No N met p99 ≤ 100 ms with every client complete.**")
    first_bad = next((r for r in measured if r not in good), None)
    if first_bad is not None and first_bad.total is not None:
        parts.append(
            f"From N={first_bad.clients} on it does not: p99 {_ms(first_bad.total.p99)} ms, the API process at "
            f"{first_bad.cpu['api'][0]:.2f} cores (peak {first_bad.cpu['api'][1]:.2f}), the clients at "
            f"{first_bad.cpu['clients'][0]:.2f} cores ({first_bad.client_us_per_delivery:.0f} µs of client CPU per "
            f"delivery against {first_bad.api_us_per_delivery:.0f} µs in the API), other load "
            f"{first_bad.cpu['other'][0]:.2f} cores."
        )
    every = [*measured, *[r for r in hold if r.total is not None]]
    parts.append(
        "API CPU per delivery by N: "
        + ", ".join(f"{r.clients}: {r.api_us_per_delivery:.0f} µs" for r in sorted(every, key=lambda r: r.clients))
        + " (it grows with N: see sections 3 and 4). Client CPU per delivery stays at "
        + f"{min(r.client_us_per_delivery for r in every):.0f}-{max(r.client_us_per_delivery for r in every):.0f} µs, "
        + "so the API process, not the clients, is what saturates."
    )
    best_rate = max(r.deliveries / max(r.last_delivery_s, 1e-9) for r in measured)
    target = 10_000 * args.tps
    client_us = max(r.client_us_per_delivery for r in every)
    parts.append(
        f"The most deliveries per second seen: {best_rate:,.0f}; at {args.tps:g} tokens/s, 10,000 clients need "
        f"{target:,.0f}/s, i.e. at most {1e6 / target:.0f} µs of API CPU per delivery on one core with no "
        f"headroom. The clients of this benchmark would need {target * client_us / 1e6:.1f} cores for that rate "
        f"({client_us:.0f} µs each): on a {os.cpu_count()}-core machine the goal cannot be measured even with a "
        f"perfect server, but at the rates reached here the clients used at most "
        f"{max(r.cpu['clients'][0] for r in every):.2f} cores and were not the limit."
    )
    for run in hold:
        if run.total is not None:
            parts.append(
                f"Holding {run.clients} connections: {run.connected} connected in {run.connect_s:.0f} s, "
                f"{run.complete} complete, API RSS {run.api_rss_connected_mb:.0f} MB, p99 {_ms(run.total.p99)} ms."
            )
    other = sum(r.cpu["other"][0] for r in every) / len(every)
    if other > 0.3:
        small = min(every, key=lambda r: r.clients)
        parts.append(
            f"\n\n**Caveat: the machine was shared.** Other processes used {other:.2f} cores on average while "
            f"the fan-out runs streamed (column *other load*), so the API process, which can use at most one core, "
            f"often got less than that, and the wall-clock delays above are pessimistic. The CPU cost per delivery "
            f"is much less affected: at {small.api_us_per_delivery:.0f} µs (N={small.clients}) one whole core "
            f"makes {1e6 / small.api_us_per_delivery:,.0f} deliveries/s, enough for about "
            f"{1e6 / small.api_us_per_delivery / args.tps:,.0f} clients at {args.tps:g} tokens/s at 100 % CPU, "
            f"fewer as the cost per delivery grows with N."
        )
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--clients",
        default="100,250,500,1000,2000,5000,10000",
        help="fan-out sizes, in order; stops after the first that breaks (p99 > 10 s or clients incomplete)",
    )
    parser.add_argument(
        "--hold-clients",
        type=int,
        default=10_000,
        help="then, unless the sweep got there: this many clients on a short job (0: skip)",
    )
    parser.add_argument("--hold-words", type=int, default=3, help="question words of the short job")
    parser.add_argument(
        "--gc-compare",
        default="500,1000",
        help="then these fan-out sizes again, the API timing its GC as it is and with the GC tuned ('': skip)",
    )
    parser.add_argument(
        "--api-gc",
        choices=["off", "stats", "freeze", "tuned"],
        default="off",
        help="off: the API exactly as tests start it; stats: through a wrapper timing its garbage "
        "collections; freeze: the same plus gc.freeze() after imports; tuned: freeze plus "
        "gc.set_threshold(50_000, 20, 100)",
    )
    parser.add_argument("--tps", type=float, default=20, help="tokens per second of the fan-out job")
    parser.add_argument("--latency-rates", default="20,50", help="tokens/s of the latency jobs")
    parser.add_argument("--latency-jobs", type=int, default=3, help="latency jobs per rate")
    parser.add_argument("--words", type=int, default=45, help="words in each question (about 2 tokens per word)")
    parser.add_argument("--client-procs", type=int, default=2, help="processes running the clients")
    parser.add_argument(
        "--connect-concurrency", type=int, default=100, help="connections being set up at once, per process"
    )
    parser.add_argument("--stream-timeout-s", type=float, default=120, help="give up on a run's stream after this")
    parser.add_argument("--budget-s", type=float, default=480, help="skip runs that would not fit in this")
    parser.add_argument("--api-redis-max-connections", type=int, default=200)
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=10,
        help="before each run, wait up to this long for other processes on the machine to go quiet",
    )
    parser.add_argument(
        "--py-spy",
        default=find_py_spy(),
        help="py-spy binary; profiles the API during the fan-out run of --profile-at clients (default: PATH, .venv)",
    )
    parser.add_argument("--profile-at", type=int, default=1000)
    parser.add_argument("--py-spy-native", action="store_true", help="include C frames (py-spy --native)")
    parser.add_argument("--no-micro", action="store_true", help="skip the in-process microbenchmark")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] == ["--serve-api"]:
        serve_api(int(raw[1]), raw[2], Path(raw[3]))
        return
    args = parse_args(raw)
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.monotonic()
    _raise_fd_limit()  # inherited by the API and every other process started from here
    signal.signal(signal.SIGTERM, _exit_on_signal)  # so that `finally` stops every process we started
    bench = Bench(args)
    latency: list[Run] = []
    fanout: list[Run] = []
    hold: list[Run] = []
    gc_runs: list[Run] = []
    skipped: list[str] = []

    def keep(run: Run, into: list[Run]) -> None:
        into.append(run)
        _progress(run)

    try:
        bench.start()
        for tps in (float(x) for x in args.latency_rates.split(",") if x):
            for _ in range(args.latency_jobs):
                keep(bench.run("latency", 1, tps, args.words), latency)
        sizes = [int(x) for x in args.clients.split(",") if x]
        for i, n in enumerate(sizes):
            remaining = args.budget_s - (time.monotonic() - t0)
            estimate = _estimate_s(fanout, n)
            if estimate > remaining:
                skipped.extend(
                    f"N={m} not run: estimated {_estimate_s(fanout, m):.0f} s, {remaining:.0f} s of the --budget-s left"
                    for m in sizes[i:]
                )
                break
            run = bench.run("fanout", n, args.tps, args.words, profile=n == args.profile_at)
            keep(run, fanout)
            if run.total is None or run.complete < 0.99 * n or run.total.p99 > 10:
                skipped.extend(f"N={m} not run: N={n} already broke (see above)" for m in sizes[i + 1 :])
                break
        if args.hold_clients and not any(r.clients >= args.hold_clients for r in fanout):
            remaining = args.budget_s - (time.monotonic() - t0)
            if remaining > 60:
                keep(bench.run("hold", args.hold_clients, args.tps, args.hold_words), hold)
            else:
                skipped.append(f"hold run of {args.hold_clients} clients not run: {remaining:.0f} s of budget left")
        gc_sizes = [int(x) for x in args.gc_compare.split(",") if x and int(x)]
        for mode in ("stats", "tuned") if gc_sizes else ():
            remaining = args.budget_s - (time.monotonic() - t0)
            if remaining < 30 * len(gc_sizes):
                skipped.append(f"GC comparison ({mode}) not run: {remaining:.0f} s of budget left")
                continue
            bench.restart_api(mode)
            for n in gc_sizes:
                keep(bench.run("gc", n, args.tps, args.words), gc_runs)
    finally:
        bench.stop()
    micro = None if args.no_micro else microbenchmark()
    text = report(args, started, latency, fanout, hold, gc_runs, skipped, micro, time.monotonic() - t0)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"(written to {args.output})", file=sys.stderr)


def serve_api(port: int, gc_mode: str, stats_path: Path) -> None:
    """`--serve-api PORT MODE FILE`: the unchanged `api.main:app` under uvicorn, timing its garbage collections.

    MODE `stats` only records; `freeze` also calls `gc.freeze()` once everything is imported, `tuned`
    also raises the collection thresholds (the one-line changes this lets you evaluate). Totals are
    rewritten to FILE every 0.5 s.
    """
    import uvicorn

    from api.main import app

    if gc_mode in ("freeze", "tuned"):
        gc.freeze()
    if gc_mode == "tuned":
        gc.set_threshold(50_000, 20, 100)
    totals: dict[str, Any] = {"seconds": 0.0, "collections": [0, 0, 0]}
    began = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            totals["seconds"] += time.perf_counter() - began[0]
            totals["collections"][info["generation"]] += 1

    gc.callbacks.append(on_gc)

    def dump() -> None:
        tmp = stats_path.with_suffix(".tmp")
        while True:
            tmp.write_text(json.dumps(totals))
            os.replace(tmp, stats_path)
            time.sleep(0.5)

    threading.Thread(target=dump, daemon=True, name="gc-stats").start()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _estimate_s(done: list[Run], n: int) -> float:
    """Rough wall time of a fan-out run of n clients, scaled from the largest one so far."""
    if not done:
        return 30.0
    last = max(done, key=lambda r: r.clients)
    return last.wall_s * max(1.0, n / last.clients)


def _progress(run: Run) -> None:
    t = run.total
    summary = f"p50 {_ms(t.p50)} ms, p99 {_ms(t.p99)} ms, max {_ms(t.max)} ms" if t else run.note
    print(
        f"[sse-bench] {run.scenario} N={run.clients} {run.label} tps={run.tps:g}: {run.complete}/{run.clients} "
        f"complete, "
        f"{summary} ({run.wall_s:.1f} s)",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    main()
