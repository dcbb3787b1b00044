"""Load generation for `python -m bench`: a lean HTTP/1.1 client, closed-loop users, SSE readers.

Two cores serve the system under test *and* the load, so the client must be
cheap: each user is one keep-alive socket driven by asyncio streams (uvloop
when installed), requests are pre-encoded bytes, responses are read by
Content-Length (or chunked), and nothing else happens per request.
"""

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# 14 words: the scripted LM's answer to it for the `qa` program is 62 chunks
# (reasoning, answer, key_concepts, question_type with their headers).
QUESTION = "Bench {tag}: what is the name of the capital city of France these days?"


def new_question() -> str:
    return QUESTION.format(tag=uuid.uuid4().hex[:8])


class HttpError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    def request_bytes(self, method: str, path: str, body: bytes | None = None) -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return head.encode() + b"\r\n" + (body or b"")

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        data = self.request_bytes(method, path, body)
        for attempt in (1, 2):
            if self.writer is None or self.writer.is_closing():
                await self._connect()
            assert self.reader is not None and self.writer is not None
            self.writer.write(data)
            try:
                return await self._read_response()
            except (asyncio.IncompleteReadError, ConnectionResetError) as e:
                # A keep-alive connection the server closed while idle: retry once on a new one.
                self.close()
                if attempt == 2 or (isinstance(e, asyncio.IncompleteReadError) and e.partial):
                    raise
        raise AssertionError("unreachable")

    async def _read_response(self) -> tuple[int, bytes]:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = -1
        chunked = close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            body = b"".join(parts)
        elif length >= 0:
            body = await self.reader.readexactly(length)
        else:
            body = await self.reader.read()
            close = True
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# --------------------------------------------------------------------------------------------
# Closed loop: N users, each submitting and waiting, over and over
# --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    question: str
    start: float  # time.time() just before the request was written
    end: float  # time.time() when the whole response was read
    outcome: str  # "ok", or why not
    job: dict[str, Any] | None = None  # our job record, when the response carried one


@dataclass
class LoadRun:
    name: str
    clients: int
    warmup_s: float
    duration_s: float
    window: tuple[float, float] = (0.0, 0.0)  # time.time() of the measured window
    samples: list[Sample] = field(default_factory=list)
    unfinished: int = 0  # requests still open when the drain time ran out
    client_cpu_s: float = 0.0  # this process's CPU during the window

    @property
    def measured(self) -> list[Sample]:
        """Requests that ended inside the measured window."""
        w0, w1 = self.window
        return [s for s in self.samples if w0 <= s.end <= w1]

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.measured if s.outcome == "ok"]

    @property
    def failures(self) -> Counter[str]:
        return Counter(s.outcome for s in self.measured if s.outcome != "ok")

    @property
    def throughput(self) -> float:
        w0, w1 = self.window
        return len(self.ok) / max(w1 - w0, 1e-9)


# Turns (status, body) into ("ok" or a failure reason, the job record if any).
Classify = Callable[[int, bytes], tuple[str, dict[str, Any] | None]]


def classify_job(status: int, body: bytes) -> tuple[str, dict[str, Any] | None]:
    """`POST /jobs?wait=...`: 200 with a succeeded job is ok; 202 means not done within `wait`."""
    if status == 202:
        return "timeout (202: not finished within wait)", None
    if status != 200:
        return f"HTTP {status}", None
    job: dict[str, Any] = json.loads(body)
    if job.get("status") != "succeeded":
        error = job.get("error") or {}
        return f"job {job.get('status')} ({error.get('type', '?')})", job
    return "ok", job


def classify_predict(status: int, body: bytes) -> tuple[str, dict[str, Any] | None]:
    if status != 200:
        return f"HTTP {status}", None
    return ("ok", None) if b'"answer"' in body else ("no answer in the response", None)


async def closed_loop(
    name: str,
    host: str,
    port: int,
    path: str,
    classify: Classify,
    clients: int,
    warmup_s: float,
    duration_s: float,
    request_timeout_s: float,
    drain_s: float,
    ramp_s: float = 1.0,
    on_mark: Callable[[str], None] | None = None,
    body_extra: dict[str, Any] | None = None,
) -> LoadRun:
    """`clients` users submit, wait for the answer, and submit again, for warm-up + duration.

    Users start spread over `ramp_s`. When the window ends they submit no more;
    requests still open are given `drain_s` to finish (kept, outside the
    window), then abandoned (counted in `unfinished`). `on_mark("start")` and
    `on_mark("end")` are called when the window opens and closes (to read
    CPU counters of the system under test). `body_extra` is merged into every
    request's JSON body (`{"stream": false}`).
    """
    run = LoadRun(name, clients, warmup_s, duration_s)
    t_start = time.time()
    w0 = t_start + warmup_s
    w1 = w0 + duration_s
    run.window = (w0, w1)
    cpu_at: dict[str, float] = {}

    async def mark_cpu() -> None:
        await asyncio.sleep(max(0.0, w0 - time.time()))
        cpu_at["w0"] = time.process_time()
        if on_mark is not None:
            on_mark("start")
        await asyncio.sleep(max(0.0, w1 - time.time()))
        cpu_at["w1"] = time.process_time()
        if on_mark is not None:
            on_mark("end")

    async def user(i: int) -> None:
        await asyncio.sleep(ramp_s * i / max(clients, 1))
        conn = Connection(host, port)
        try:
            while time.time() < w1:
                question = new_question()
                body = json.dumps({"question": question, **(body_extra or {})}).encode()
                start = time.time()
                try:
                    status, raw = await asyncio.wait_for(conn.request("POST", path, body), request_timeout_s)
                    outcome, job = classify(status, raw)
                except TimeoutError:
                    conn.close()
                    outcome, job = "client timeout", None
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
                    conn.close()
                    outcome, job = f"transport: {type(e).__name__}", None
                run.samples.append(Sample(question, start, time.time(), outcome, job))
                if outcome.startswith("transport"):
                    await asyncio.sleep(0.05)  # do not spin on a refused connection
        finally:
            conn.close()

    marker = asyncio.create_task(mark_cpu())
    users = [asyncio.create_task(user(i)) for i in range(clients)]
    await asyncio.sleep(max(0.0, w1 - time.time()))
    _done, pending = await asyncio.wait(users, timeout=drain_s)
    run.unfinished = len(pending)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await marker
    run.client_cpu_s = cpu_at.get("w1", 0.0) - cpu_at.get("w0", 0.0)
    return run


async def requests_many(
    host: str, port: int, requests: list[tuple[str, str, bytes | None]], concurrency: int
) -> list[tuple[int, bytes] | Exception]:
    """(method, path, body) requests over `concurrency` keep-alive connections; (status, body) or the error."""
    results: list[tuple[int, bytes] | Exception] = [ValueError("not sent")] * len(requests)
    todo: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(requests)):
        todo.put_nowait(i)

    async def worker() -> None:
        conn = Connection(host, port)
        try:
            while not todo.empty():
                i = todo.get_nowait()
                try:
                    results[i] = await conn.request(*requests[i])
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
                    conn.close()
                    results[i] = e
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(requests)))))
    return results


# --------------------------------------------------------------------------------------------
# SSE
# --------------------------------------------------------------------------------------------


@dataclass
class Stream:
    """One `GET /jobs/{id}/events` connection, read with a minimal parser."""

    job_id: str
    status: int = 0
    first_event_t: float = 0.0
    first_token_t: float = 0.0
    first_token: dict[str, Any] | None = None
    end_t: float = 0.0
    terminal: str = ""  # "result" / "error", or why the stream ended without one
    events: int = 0


async def follow_events(
    host: str, port: int, stream: Stream, first_event: asyncio.Event | None = None, timeout_s: float = 120.0
) -> Stream:
    """Read a job's event stream to its terminal event (or `timeout_s`), noting when things arrived."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        writer.write(
            f"GET /jobs/{stream.job_id}/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        async with asyncio.timeout(timeout_s):
            head = await reader.readuntil(b"\r\n\r\n")
            stream.status = int(head[9:12])
            if stream.status != 200:
                stream.terminal = f"HTTP {stream.status}"
                return stream
            buf = b""
            while True:
                data = await reader.read(65536)
                now = time.time()
                if not data:
                    stream.terminal = stream.terminal or "closed before the terminal event"
                    return stream
                buf += data
                # Chunked framing lines ("<hex>\r\n") sit between events; events never span them.
                while (end := buf.find(b"\r\n\r\n")) >= 0:
                    block, buf = buf[:end], buf[end + 4 :]
                    kind, data_line = b"", b""
                    for line in block.split(b"\r\n"):
                        if line.startswith(b"event: "):
                            kind = line[7:]
                        elif line.startswith(b"data: "):
                            data_line = line[6:]
                    if not kind:
                        continue
                    stream.events += 1
                    if stream.events == 1:
                        stream.first_event_t = now
                        if first_event is not None:
                            first_event.set()
                    if kind == b"token" and not stream.first_token_t:
                        stream.first_token_t = now
                        stream.first_token = json.loads(data_line)
                    if kind in (b"result", b"error"):
                        stream.terminal = kind.decode()
                        stream.end_t = now
                        return stream
    except TimeoutError:
        stream.terminal = "stream timeout"
        return stream
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
        stream.terminal = f"transport: {type(e).__name__}"
        return stream
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
