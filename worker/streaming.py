"""Run a program, streaming every output field chunk by chunk, or not at all.

`dspy.streamify` with listeners created fresh for every job: a listener that
has finished drops later chunks (dspy#8425), so one shared across jobs would
go silent. A program with `aforward` runs on its Celery thread's own event
loop (one per thread, kept). A program without it goes through streamify's
sync mode, which runs it in DSPy's `asyncify` threads, sharing one
process-wide limiter of `async_max_workers`; the caller raises it to the
worker's concurrency, or the ninth concurrent stream would wait forever.

A job submitted with `stream: false` skips all of that: a plain call, a
non-streaming LM request, no listeners. Streaming is most of a job's CPU in
the worker (the LM client decodes every chunk, every listener looks at every
chunk, every chunk is an event), so a job nobody watches token by token
should not pay for it.

When nothing streams (not asked to, DSPy answered from its cache, or the LM
does not stream) every field is still reported, whole, through `on_token`,
so a client never needs a special case.
"""

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable
from typing import Any

import dspy
from dspy.streaming import StreamListener, StreamResponse

OnToken = Callable[[str, str], None]


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


_thread_state = threading.local()


def _thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's own event loop, kept for the life of the thread."""
    loop: asyncio.AbstractEventLoop | None = getattr(_thread_state, "loop", None)
    if loop is None:
        loop = _thread_state.loop = asyncio.new_event_loop()
    return loop


def has_async_forward(program: dspy.Module) -> bool:
    return callable(getattr(program, "aforward", None))


def run_prediction(program: dspy.Module, inputs: dict[str, Any], on_token: OnToken, stream: bool) -> dspy.Prediction:
    """The program's prediction; every output field goes through `on_token`, streamed or whole."""
    fields = output_fields(program)
    streamed: set[str] = set()
    if stream:
        prediction = _streamed_prediction(program, fields, inputs, on_token, streamed)
    elif has_async_forward(program):
        prediction = _thread_loop().run_until_complete(program.acall(**inputs))
    else:
        prediction = program(**inputs)
    for name in fields:
        if name not in streamed and name in prediction:
            on_token(name, field_text(prediction[name]))
    return prediction


def _streamed_prediction(
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
        # The whole job on this thread's own loop: the sync form of streamify
        # hops every chunk across two more threads, and those wake-ups were
        # the largest CPU cost of a job.
        prediction = _thread_loop().run_until_complete(consume())
    else:
        sync_stream = dspy.streamify(program, stream_listeners=listeners, async_streaming=False)
        with contextlib.closing(sync_stream(**inputs)) as values:
            for value in values:
                prediction = handle(value) or prediction
    if prediction is None:
        raise RuntimeError("the program's stream ended without a prediction")
    return prediction
