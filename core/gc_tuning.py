"""Garbage-collector settings for our long-lived processes (API and worker).

Both processes import large libraries (DSPy, LiteLLM, FastAPI, Celery) whose
objects live for the whole process, then allocate many short-lived objects
per event and per job. CPython's collector re-scans the long-lived ones on
every older-generation pass, which is both CPU and a pause of every thread:
the API spent 42 % of its CPU in GC at 1,000 SSE clients
(bench/results/sse.md). So everything alive once the process is ready is
frozen (never scanned again), and the youngest generation is collected less
often.
"""

import gc


def tune_gc() -> None:
    """Call once everything long-lived is loaded (imports, programs, clients)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
