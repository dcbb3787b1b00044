"""Run a program, streaming every output field chunk by chunk, or not at all.

A job submitted with `stream: false` gets a plain call: a non-streaming LM
request, nothing per chunk. Streaming was most of a job's CPU in the worker
(the LM client decodes every chunk, and every chunk is an event), so a job
nobody watches token by token should not pay for it.

Every job of a worker process runs on the process's event loop
(worker/engine.py): a program with `aforward` is awaited there, one without
it runs `forward` in a thread of its own (`run_sync`). One loop for all
jobs costs less CPU per call than one loop per thread
(bench/results/job_loop.md): DSPy's async LM client holds a connection
pool per loop, and many loops take turns at the GIL. One loop means one
connection pool for DSPy's native client, whose 100-connection cap is
raised to what the LM's limits allow (the `lm15_connections` patch,
patches/lm15_connections.py).

A streaming job of a program with `aforward` and DSPy's ChatAdapter (ours)
has DSPy's LM send each chunk straight to a `FieldParser` (through
`settings.send_stream`, the hook `dspy.streamify` uses). `dspy.streamify`
itself costs, per chunk, a hop between two tasks through a memory stream and
one `StreamListener` call per output field, each re-scanning its buffer:
py-spy put `streamify` and the listeners at half of a streaming job's
worker CPU. The parser splits the completion at ChatAdapter's
`[[ ## field ## ]]` headers the way the adapter parses it (each field's
text stripped, headers never shown), so the streamed text of a field is the
text the adapter turns into its value. With DSPy's JSONAdapter (the embedded
model's) a `JsonFieldParser` does the same for the JSON object the model
writes: string values decoded, typed values as their JSON, never the quotes,
keys and commas around them (which `dspy.streamify`'s listeners let through).

Any other program or adapter goes through `dspy.streamify` with listeners
created fresh for every job (a listener that has finished drops later
chunks, dspy#8425); a program without `aforward` runs in streamify's sync
mode in its thread.

When nothing streams (not asked to, DSPy answered from its cache, or the LM
does not stream) every field is still reported, whole, through `on_token`,
so a client never needs a special case.
"""

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import dspy
from dspy.streaming import StreamListener, StreamResponse

from worker.field_parser import FieldParser, JsonFieldParser, OnToken

Parser = FieldParser | JsonFieldParser
_PARSERS: dict[type, type[Parser]] = {dspy.ChatAdapter: FieldParser, dspy.JSONAdapter: JsonFieldParser}

log = logging.getLogger(__name__)


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


def has_async_forward(program: dspy.Module) -> bool:
    return callable(getattr(program, "aforward", None))


RunSync = Callable[..., Awaitable[Any]]


async def predict(
    program: dspy.Module, inputs: dict[str, Any], on_token: OnToken, stream: bool, run_sync: RunSync
) -> dspy.Prediction:
    """The program's prediction; every output field goes through `on_token`, streamed or whole.

    Runs inside the job's `dspy.context` (its LM and adapter); `run_sync(fn, *args)` runs a blocking call in
    a thread, in the caller's context."""
    fields = output_fields(program)
    streamed: set[str] = set()
    if not stream:
        prediction = await (program.acall(**inputs) if has_async_forward(program) else run_sync(program, **inputs))
    elif has_async_forward(program) and type(dspy.settings.adapter) in _PARSERS:
        parser = _PARSERS[type(dspy.settings.adapter)](fields, on_token, streamed)
        prediction = await _parsed(program, inputs, parser)
    else:
        prediction = await _streamified(program, fields, inputs, on_token, streamed, run_sync)
    for name in fields:
        if name not in streamed and name in prediction:
            on_token(name, field_text(prediction[name]))
    return prediction


# --------------------------------------------------------------------------------------------
# Streaming with our own parser (worker/field_parser.py)
# --------------------------------------------------------------------------------------------


class _Stop(BaseException):
    """Carries `on_token`'s exception (a cancelled job, its time limit) out of DSPy's LM call, which
    would turn an `Exception` raised inside it into an `LMUnexpectedError`. The stream to the LM is
    closed on the way out, so the provider stops generating."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


class _ToParser:
    """What DSPy's LM sends each chunk to (`settings.send_stream`)."""

    def __init__(self, parser: Parser) -> None:
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


async def _parsed(program: dspy.Module, inputs: dict[str, Any], parser: Parser) -> dspy.Prediction:
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


async def _streamified(
    program: dspy.Module,
    fields: list[str],
    inputs: dict[str, Any],
    on_token: OnToken,
    streamed: set[str],
    run_sync: RunSync,
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

    def consume_sync() -> dspy.Prediction | None:
        found = None
        sync_stream = dspy.streamify(program, stream_listeners=listeners, async_streaming=False)
        with contextlib.closing(sync_stream(**inputs)) as values:
            for value in values:
                found = handle(value) or found
        return found

    prediction: dspy.Prediction | None = None
    if has_async_forward(program):
        streaming = dspy.streamify(program, stream_listeners=listeners, is_async_program=True)
        # Closed here even when on_token raises (a cancelled job): left open, the
        # generator would be finalized later from another task, which anyio refuses.
        async with contextlib.aclosing(streaming(**inputs)) as values:
            async for value in values:
                prediction = handle(value) or prediction
    else:
        prediction = await run_sync(consume_sync)
    if prediction is None:
        raise RuntimeError("the program's stream ended without a prediction")
    return prediction
