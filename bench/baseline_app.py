"""The direct-call baseline: the same program served the tutorial way, for `python -m bench`.

    uvicorn bench.baseline_app:app --port 8001      (settings from the environment, as the worker's)

`POST /predict` with `{"question": ...}` awaits `program.acall(question=...)`
inside the request and answers the prediction's fields. No queue, no job
record, no streaming, no retries: what a FastAPI tutorial does. The program
and the LM are built exactly as a worker builds them (worker/runtime.py):
the `qa` program from its registry entry, its artifact loaded, its saved LM
cleared, the LM and adapter from `program.lm` with the same settings, and
every call inside `dspy.context` with history and trace off, and DSPy's
model metadata lookups and type adapters cached as in the worker (patches/dspy_caches.py),
so that a comparison measures the queue and not those fixes.
"""

from typing import Any

from core.offline import disable_runtime_downloads

disable_runtime_downloads()  # before dspy imports litellm, as in worker/__init__.py

import dspy  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from pydantic import BaseModel, ConfigDict  # noqa: E402

from core.settings import get_settings  # noqa: E402
from patches import dspy_caches  # noqa: E402
from program.lm import build_adapter, build_lm  # noqa: E402
from program.registry import get_program_spec  # noqa: E402

# Always, whatever DISABLED_PATCHES says: the baseline is the fixed point comparisons are made against.
dspy_caches.apply()

settings = get_settings()
spec = get_program_spec(settings, settings.default_program)
qa = spec.build()
qa.load(str(spec.artifact))
qa.set_lm(None)
lm = build_lm(settings)
adapter = build_adapter(settings)

app = FastAPI(title="DSPy direct-call baseline")


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str


@app.post("/predict")
async def predict(body: Question) -> dict[str, Any]:
    with dspy.context(lm=lm, adapter=adapter, disable_history=True, trace=None):
        prediction = await qa.acall(question=body.question)
    return {"result": dict(prediction.items())}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
