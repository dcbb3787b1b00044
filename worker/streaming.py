"""Run a program, streaming every output field chunk by chunk, or not at all.

A job submitted with `stream: false` gets a plain call: a non-streaming LM
request, nothing per chunk. Streaming was most of a job's CPU in the worker
(the LM client decodes every chunk, and every chunk is an event), so a job
nobody watches token by token should not pay for it.

A program with `aforward` runs on the process's one job loop, an event loop
on a thread of its own: the Celery thread hands it the call (in its own
context, so its `dspy.context` and log ids go along) and waits. One loop
per Celery thread cost 39 % more CPU per call (DSPy's async LM client then
holds a connection pool per loop, and 256 loops take turns at the GIL) than
one loop for all: 1.83 against 1.32 ms per call of the `qa` program, 32
threads, an LM answering at once; 32 tasks on one loop without threads, the
way the direct-call baseline runs, took 1.33 (bench/results/job_loop.md).
The price: a program whose `aforward` blocks (sync I/O inside an async
method) holds up every job of its process, not only its own; a
program with only `forward` runs in its Celery thread as before. One loop
means one connection pool for DSPy's native client, whose 100-connection cap
is raised to the worker's concurrency (`raise_lm_connection_cap`).

A streaming job of a program with `aforward` and DSPy's ChatAdapter (ours)
has DSPy's LM send each chunk straight to a `FieldParser` (through
`settings.send_stream`, the hook `dspy.streamify` uses). `dspy.streamify`
itself costs, per chunk, a hop between two tasks through a memory stream and
one `StreamListener` call per output field, each re-scanning its buffer:
py-spy put `streamify` and the listeners at half of a streaming job's
worker CPU. The parser splits the completion at ChatAdapter's
`[[ ## field ## ]]` headers the way the adapter parses it (each field's
text stripped, headers never shown), so the streamed text of a field is the
text the adapter turns into its value.

Any other program or adapter goes through `dspy.streamify` with listeners
created fresh for every job (a listener that has finished drops later
chunks, dspy#8425); a program without `aforward` runs in streamify's sync
mode, in DSPy's `asyncify` threads under one process-wide limiter of
`async_max_workers`, which the caller raises to the worker's concurrency
(the ninth concurrent stream would wait forever otherwise).

When nothing streams (not asked to, DSPy answered from its cache, or the LM
does not stream) every field is still reported, whole, through `on_token`,
so a client never needs a special case.
"""

import asyncio
import concurrent.futures
import contextlib
import importlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, TypeVarTuple

import dspy
import dspy.clients.execution as dspy_execution
from dspy.streaming import StreamListener, StreamResponse

# Imported by name: a static import of dspy's vendored package makes mypy read all of dspy.
ROUTER_CONFIG: Any = importlib.import_module("dspy._vendor.lm15.router").RouterConfig
DEFAULT_MAX_CONNECTIONS: int = importlib.import_module("dspy._vendor.lm15.transports").DEFAULT_MAX_CONNECTIONS

log = logging.getLogger(__name__)
OnToken = Callable[[str, str], None]
T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def output_fields(program: dspy.Module) -> list[str]:
    """Every output field of the program's predictors, in signature order, once each."""
    names: list[str] = []
    for predictor in program.predictors():
        names += [name for name in predictor.signature.output_fields if name not in names]
    return names


def field_text(value: Any) -> str:
    """A field's final value as the text a stream of it would have spelt."""
    if isinstance(value, str):
        return value
    dump = getattr(value, "model_dump", None)
    return json.dumps(dump(mode="json") if callable(dump) else value)


_loop_lock = threading.Lock()
_loop: "tuple[int, threading.Thread, asyncio.AbstractEventLoop] | None" = None


def _job_loop() -> asyncio.AbstractEventLoop:
    """The process's job loop, started on first use (in a prefork child: in the child, after the fork)."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop[0] != os.getpid() or not _loop[1].is_alive():
            loop = _JobLoop()
            thread = threading.Thread(target=loop.run_forever, name="job-loop", daemon=True)
            thread.start()
            _loop = (os.getpid(), thread, loop)
        return _loop[2]


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Runs `coroutine` on the job loop in the caller's context (its `dspy.context`, its log ids); waits for it."""
    return asyncio.run_coroutine_threadsafe(coroutine, _job_loop()).result()


def raise_lm_connection_cap(connections: int) -> bool:
    """DSPy's native LM client (lm15) opens at most 100 connections per event loop; with one loop per
    process that caps the LM calls a worker has in flight. Every client DSPy builds from now on gets
    `connections` (at least lm15's own default). False (and a warning) on a dspy laid out differently."""
    config: Any = getattr(dspy_execution, "RouterConfig", None)
    if getattr(config, "raised_to", None) is not None:
        return True
    if config is not ROUTER_CONFIG:
        log.warning("dspy is not laid out as worker/streaming.py expects; LM calls in flight stay capped at 100")
        return False
    cap = max(connections, DEFAULT_MAX_CONNECTIONS)

    def router_config(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("transport") is None:
            kwargs.setdefault("max_connections", cap)
        return ROUTER_CONFIG(*args, **kwargs)

    router_config.raised_to = cap  # type: ignore[attr-defined]
    dspy_execution.RouterConfig = router_config
    return True


class _JobLoop(asyncio.SelectorEventLoop):
    """An event loop that runs what is handed to an executor at once, itself.

    DSPy hands work to `asyncio.to_thread` twice per LM call (preparing the
    request, pricing the response; reading and writing its cache when on) so
    as not to block the loop. The first two are Python work that holds the
    GIL wherever it runs, and each hop to an executor thread and back cost
    two thread wake-ups under a contended GIL (and, even with an executor
    that runs it inline, a write to the loop's self-pipe to deliver the
    result). The cache's reads and writes are local disk I/O of one entry.
    """

    def run_in_executor(
        self, executor: concurrent.futures.Executor | None, func: Callable[[*Ts], T], *args: *Ts
    ) -> "asyncio.Future[T]":
        future: asyncio.Future[T] = self.create_future()
        try:
            future.set_result(func(*args))
        except Exception as e:
            future.set_exception(e)
        return future


def has_async_forward(program: dspy.Module) -> bool:
    return callable(getattr(program, "aforward", None))


def run_prediction(program: dspy.Module, inputs: dict[str, Any], on_token: OnToken, stream: bool) -> dspy.Prediction:
    """The program's prediction; every output field goes through `on_token`, streamed or whole.

    Runs inside the job's `dspy.context` (its LM and adapter)."""
    fields = output_fields(program)
    streamed: set[str] = set()
    if not stream:
        prediction = _call(program, inputs)
    elif has_async_forward(program) and type(dspy.settings.adapter) is dspy.ChatAdapter:
        parser = FieldParser(fields, on_token, streamed)
        prediction = _run(_parsed(program, inputs, parser))
    else:
        prediction = _streamified(program, fields, inputs, on_token, streamed)
    for name in fields:
        if name not in streamed and name in prediction:
            on_token(name, field_text(prediction[name]))
    return prediction


def _call(program: dspy.Module, inputs: dict[str, Any]) -> dspy.Prediction:
    if has_async_forward(program):
        return _run(program.acall(**inputs))
    return program(**inputs)


# --------------------------------------------------------------------------------------------
# Streaming with our own parser
# --------------------------------------------------------------------------------------------

_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]")
# What a header looks like before its last character has arrived: "[", "[[", ... "[[ ## name ## ]".
_HEADER_PARTS = [r"\[", " ", "#", "#", " ", r"\w+", " ", "#", "#", " ", r"\]"]
_PARTIAL_HEADER = re.compile(r"\[" + "".join(f"(?:{p}" for p in _HEADER_PARTS) + ")?" * len(_HEADER_PARTS) + r"\Z")


class FieldParser:
    """Splits a ChatAdapter completion, fed in pieces, into the text of each output field, as it arrives.

    Text after a header belongs to that field (text under any other header,
    such as `completed`, to none). A field's text is stripped as the adapter
    strips it: leading whitespace dropped, trailing whitespace held back until
    more text follows, none sent after the field's last word. A piece that
    may be the start of the next header waits for the characters that decide.
    """

    def __init__(self, fields: list[str], on_token: OnToken, streamed: set[str]) -> None:
        self._fields = set(fields)
        self._on_token = on_token
        self.streamed = streamed
        self._pending = ""  # not yet given to a field: may hold the start of a header
        self._field: str | None = None
        self._started = False  # the current field has had text other than whitespace
        self._held = ""  # trailing whitespace of the current field, sent only if more text follows

    def feed(self, text: str) -> None:
        pending = self._pending + text
        while (header := _HEADER.search(pending)) is not None:
            self._write(pending[: header.start()])
            name = header.group(1)
            self._field = name if name in self._fields else None
            self._started, self._held = False, ""
            pending = pending[header.end() :]
        cut = pending.find("[")
        while cut >= 0 and not _PARTIAL_HEADER.match(pending, cut):
            cut = pending.find("[", cut + 1)
        if cut < 0:
            cut = len(pending)
        self._write(pending[:cut])
        self._pending = pending[cut:]

    def finish(self) -> None:
        """The completion ended: what is left belongs to the field being written."""
        self._write(self._pending)
        self._pending = ""

    def _write(self, text: str) -> None:
        if self._field is None or not text:
            return
        if not self._started:
            text = text.lstrip()
        body = text.rstrip()
        if body:
            self._started = True
            self.streamed.add(self._field)
            self._on_token(self._field, self._held + body)
            self._held = text[len(body) :]
        else:
            self._held += text


class _Stop(BaseException):
    """Carries `on_token`'s exception (a cancelled job, its time limit) out of DSPy's LM call, which
    would turn an `Exception` raised inside it into an `LMUnexpectedError`. The stream to the LM is
    closed on the way out, so the provider stops generating."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


class _ToParser:
    """What DSPy's LM sends each chunk to (`settings.send_stream`)."""

    def __init__(self, parser: FieldParser) -> None:
        self._parser = parser

    async def send(self, chunk: Any) -> None:
        try:
            text = chunk.choices[0].delta.content
        except (AttributeError, IndexError, KeyError, TypeError):
            return
        if not text:
            return
        try:
            self._parser.feed(text)
        except Exception as e:
            raise _Stop(e) from e


async def _parsed(program: dspy.Module, inputs: dict[str, Any], parser: FieldParser) -> dspy.Prediction:
    with dspy.context(send_stream=_ToParser(parser)):
        try:
            prediction: dspy.Prediction = await program.acall(**inputs)
        except _Stop as stop:
            raise stop.error from None
    parser.finish()
    return prediction


# --------------------------------------------------------------------------------------------
# Streaming through dspy.streamify (other programs and adapters)
# --------------------------------------------------------------------------------------------


def _streamified(
    program: dspy.Module, fields: list[str], inputs: dict[str, Any], on_token: OnToken, streamed: set[str]
) -> dspy.Prediction:
    listeners = [StreamListener(signature_field_name=name) for name in fields]

    def handle(value: object) -> dspy.Prediction | None:
        if isinstance(value, StreamResponse):
            if value.chunk:
                streamed.add(value.signature_field_name)
                on_token(value.signature_field_name, value.chunk)
        elif isinstance(value, dspy.Prediction):
            return value
        return None

    async def consume() -> dspy.Prediction | None:
        found = None
        streaming = dspy.streamify(program, stream_listeners=listeners, is_async_program=True)
        # Closed here even when on_token raises (a cancelled job): left open, the
        # generator would be finalized later from another task, which anyio refuses.
        async with contextlib.aclosing(streaming(**inputs)) as values:
            async for value in values:
                found = handle(value) or found
        return found

    prediction: dspy.Prediction | None = None
    if has_async_forward(program):
        prediction = _run(consume())
    else:
        sync_stream = dspy.streamify(program, stream_listeners=listeners, async_streaming=False)
        with contextlib.closing(sync_stream(**inputs)) as values:
            for value in values:
                prediction = handle(value) or prediction
    if prediction is None:
        raise RuntimeError("the program's stream ended without a prediction")
    return prediction
