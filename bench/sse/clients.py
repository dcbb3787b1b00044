"""The SSE clients: raw asyncio protocols on uvloop, one socket each, run in child processes.

A child process receives a `SwarmJob` on its pipe, opens that many
`GET /jobs/{id}/events` connections (`connect_concurrency` being set up at
once), answers `SwarmConnected` once each has its first event (or failed),
then `SwarmDone` with when every event id reached every client.
"""

import array
import asyncio
import contextlib
import re
import signal
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import cast

from bench.report import raise_fd_limit, run_loop
from core.events import TERMINAL_EVENTS

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


def client_process(conn: Connection) -> None:
    """A client process's main: runs each `SwarmJob` its pipe sends until it sends None."""
    raise_fd_limit()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        job = conn.recv()
        if job is None:
            return
        conn.send(run_loop(_run_swarm(job, conn)))
