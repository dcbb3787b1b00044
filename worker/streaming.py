"""Run a program while streaming every output field, chunk by chunk.

`dspy.streamify` in sync mode, with listeners created fresh for every job: a
listener that has finished drops later chunks (dspy#8425), so one shared
across jobs would go silent. streamify runs the program through DSPy's
`asyncify`, which shares one process-wide limiter of `async_max_workers`
threads; the caller raises it to the worker's concurrency, or the ninth
concurrent stream would wait forever.

When nothing streams (DSPy answered from its cache, or the LM does not
stream) every field is still reported, whole, through `on_token`, so a
client never needs a special case.
"""

import json
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


def stream_prediction(program: dspy.Module, inputs: dict[str, Any], on_token: OnToken) -> dspy.Prediction:
    fields = output_fields(program)
    listeners = [StreamListener(signature_field_name=name) for name in fields]
    streaming_program = dspy.streamify(program, stream_listeners=listeners, async_streaming=False)
    prediction: dspy.Prediction | None = None
    streamed: set[str] = set()
    for value in streaming_program(**inputs):
        if isinstance(value, StreamResponse):
            if value.chunk:
                streamed.add(value.signature_field_name)
                on_token(value.signature_field_name, value.chunk)
        elif isinstance(value, dspy.Prediction):
            prediction = value
    if prediction is None:
        raise RuntimeError("the program's stream ended without a prediction")
    for name in fields:
        if name not in streamed and name in prediction:
            on_token(name, field_text(prediction[name]))
    return prediction
