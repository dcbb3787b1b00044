"""Every LM call a job makes goes through its endpoint's capacity (core/capacity.py).

`GatedLM` is DSPy's `LM` with one thing added around each public call
(`acall`, and `__call__` for programs without `aforward`): a slot of the
model's endpoint first, given back when the call ends, with what the call
told about the endpoint (it answered, it failed, it was rate limited) and the
tokens it spent. Overriding the public methods, not `forward`, keeps DSPy's
managed call path (caching, usage, streaming) as it is.

A 429 is the endpoint's answer, not the job's: the call gives its slot back
(the release pauses the endpoint for every worker), waits for a new slot and
is sent again, without spending an attempt of the job, until the job's
attempt deadline. It is not sent again when the call had already streamed
output (the tokens are out) or when the job has no scope (outside a worker).

The job running the call is known from `call_scope`, a context variable the
job runner sets (worker/job_runner.py): its priority, the slot it was
granted before it started (its first call uses it, so a job never starts
without a slot for its first call), its deadline, and how to tell its
event stream that it waits.
"""

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import dspy

from program.lm import ServiceLM
from worker.capacity import Capacity, OnWait, Slot

# Characters per token, for the estimate a call is charged before it runs.
_CHARS_PER_TOKEN = 4
T = TypeVar("T")


@dataclass
class CallScope:
    priority: str
    reserved: Slot | None
    # time.monotonic() after which the job waits no more (a call refused for a 429 fails instead)
    deadline: float | None
    on_wait: OnWait | None
    # Token events the job has written so far: a call after which this grew has streamed output.
    streamed: Callable[[], int]
    # Asked before each call, in the caller's thread: it may refuse the call by raising (an optimization
    # stopped, or out of its budget of calls: worker/optimization.py).
    before_call: Callable[[], None] | None = None

    def take_reserved(self, model: str) -> Slot | None:
        slot, self.reserved = self.reserved, None
        if slot is not None and slot.endpoint.model != model:
            self.reserved = slot
            return None
        return slot


call_scope: contextvars.ContextVar[CallScope | None] = contextvars.ContextVar("call_scope", default=None)


class GatedLM(ServiceLM):
    """The service's LM whose calls each hold a slot of the model's endpoint (module docstring)."""

    capacity: Capacity
    loop: asyncio.AbstractEventLoop

    def gate(self, capacity: Capacity, loop: asyncio.AbstractEventLoop) -> "GatedLM":
        """Route this LM's calls through `capacity`, whose coroutines run on `loop`."""
        self.capacity = capacity
        self.loop = loop
        return self

    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        scope = call_scope.get()
        if scope is not None and scope.before_call is not None:
            scope.before_call()
        estimate = _estimate(messages, prompt, self._max_tokens)
        while True:
            slot = await self._slot(scope, estimate)
            streamed, usage = (scope.streamed() if scope else 0), _usage_entries(self.model)
            try:
                result = await super().acall(prompt, messages=messages, **kwargs)
            except BaseException as e:
                used = _spent(self.model, usage, estimate)
                if await asyncio.shield(self._settle(slot, scope, e, streamed, used)):
                    continue
                raise
            await asyncio.shield(self._settle(slot, scope, None, streamed, _spent(self.model, usage, estimate)))
            return result

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        """A call from a program's `forward`, in a thread of its own: the slot is awaited on the worker's loop."""
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is self.loop:
                raise RuntimeError(
                    "an LM was called synchronously on the worker's event loop: a program's `aforward` must "
                    "`await predictor.acall(...)`, not call the predictor"
                )
        scope = call_scope.get()
        if scope is not None and scope.before_call is not None:
            scope.before_call()
        estimate = _estimate(messages, prompt, self._max_tokens)
        while True:
            slot = self._on_loop(self._slot(scope, estimate))
            streamed, usage = (scope.streamed() if scope else 0), _usage_entries(self.model)
            try:
                result = super().__call__(prompt, messages=messages, **kwargs)
            except BaseException as e:
                if self._on_loop(self._settle(slot, scope, e, streamed, _spent(self.model, usage, estimate))):
                    continue
                raise
            self._on_loop(self._settle(slot, scope, None, streamed, _spent(self.model, usage, estimate)))
            return result

    def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    @property
    def _max_tokens(self) -> Any:
        return self.kwargs.get("max_tokens") or self.kwargs.get("max_completion_tokens")

    async def _slot(self, scope: CallScope | None, estimate: int) -> Slot:
        slot = scope.take_reserved(self.model) if scope is not None else None
        if slot is not None:
            return slot
        return await self.capacity.acquire(
            self.model,
            scope.priority if scope is not None else "interactive",
            estimate,
            deadline=(lambda: scope.deadline) if scope is not None else None,
            on_wait=scope.on_wait if scope is not None else None,
        )

    async def _settle(
        self, slot: Slot, scope: CallScope | None, error: BaseException | None, streamed_before: int, used: int
    ) -> bool:
        """Give the call's slot back with what the call said of its endpoint; True to send the call again."""
        if error is None:
            await self.capacity.release(slot, "ok", used)
            return False
        if isinstance(error, dspy.LMRateLimitError):
            retry_after = error.retry_after
            pause_s = float(retry_after) if isinstance(retry_after, int | float) and retry_after >= 0 else None
            await self.capacity.release(slot, "rate_limited", used, pause_s)
            streamed = scope is not None and scope.streamed() > streamed_before
            late = scope is None or (scope.deadline is not None and time.monotonic() >= scope.deadline)
            return not (streamed or late)
        failed = isinstance(error, Exception) and _endpoint_failure(error)
        await self.capacity.release(slot, "failed" if failed else "ok", used)
        return False


def _endpoint_failure(e: Exception) -> bool:
    """A failure that says the endpoint is in trouble (down, overloaded, unreachable), not the request."""
    return bool(dspy.is_retryable_lm_error(e)) and not isinstance(e, dspy.LMRateLimitError)


def _estimate(messages: Any, prompt: Any, max_tokens: Any) -> int:
    chars = 0
    for message in messages or [{"content": prompt or ""}]:
        content = message.get("content") if isinstance(message, dict) else message
        chars += len(content) if isinstance(content, str) else len(str(content or ""))
    return chars // _CHARS_PER_TOKEN + (int(max_tokens) if isinstance(max_tokens, int) else 0)


def _usage_entries(model: str) -> int | None:
    tracker = dspy.settings.usage_tracker
    return len(tracker.usage_data[model]) if tracker is not None else None


def _spent(model: str, entries_before: int | None, estimate: int) -> int:
    """Tokens the call just made spent, as the provider reported them; the estimate when it reported none
    (the slot of a job's first call was charged before its prompt was known, so this corrects that too)."""
    tracker = dspy.settings.usage_tracker
    entries = tracker.usage_data[model][entries_before:] if tracker is not None and entries_before is not None else []
    if not entries:
        return estimate
    return sum(int(e.get("prompt_tokens") or 0) + int(e.get("completion_tokens") or 0) for e in entries)
