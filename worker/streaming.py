"""Run a program while streaming every output field, chunk by chunk.

`dspy.streamify` with listeners created fresh for every job: a listener that
has finished drops later chunks (dspy#8425), so one shared across jobs would
go silent. A program with `aforward` runs on its Celery thread's own event
loop (one per thread, kept). A program without it goes through streamify's
sync mode, which runs it in DSPy's `asyncify` threads, sharing one
process-wide limiter of `async_max_workers`; the caller raises it to the
worker's concurrency, or the ninth concurrent stream would wait forever.

When nothing streams (DSPy answered from its cache, or the LM does not
stream) every field is still reported, whole, through `on_token`, so a
client never needs a special case.
"""

import asyncio
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


def stream_prediction(program: dspy.Module, inputs: dict[str, Any], on_token: OnToken) -> dspy.Prediction:
    fields = output_fields(program)
    listeners = [StreamListener(signature_field_name=name) for name in fields]
    streamed: set[str] = set()

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
        async for value in streaming(**inputs):
            found = handle(value) or found
        return found

    prediction: dspy.Prediction | None = None
    if has_async_forward(program):
        # The whole job on this thread's own loop: the sync form of streamify
        # hops every chunk across two more threads, and those wake-ups were
        # the largest CPU cost of a job.
        prediction = _thread_loop().run_until_complete(consume())
    else:
        for value in dspy.streamify(program, stream_listeners=listeners, async_streaming=False)(**inputs):
            prediction = handle(value) or prediction
    if prediction is None:
        raise RuntimeError("the program's stream ended without a prediction")
    for name in fields:
        if name not in streamed and name in prediction:
            on_token(name, field_text(prediction[name]))
    return prediction
