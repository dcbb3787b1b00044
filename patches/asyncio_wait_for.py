"""`asyncio.wait_for` that never loses a cancellation (CPython 3.11, gh-86296).

On 3.11, `wait_for` runs what it awaits as a task of its own. When the
caller is cancelled in the loop step in which that task completes, wait_for
returns the result and the cancellation is gone: the caller carries on as if
nobody had asked it to stop. redis-py sends every command through wait_for
(its socket timeout), so any task cancelled while it talks to Redis could
lose its cancellation: a worker's heartbeat loop kept beating after the
drain cancelled it, and the worker never exited after SIGTERM. 3.12 rebuilt
wait_for on `asyncio.timeout`, which awaits in the caller's own task; this is
that implementation, for 3.11.
"""

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from core.settings import Settings

T = TypeVar("T")

_original = asyncio.wait_for


async def wait_for(fut: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109 (asyncio.wait_for's own signature)
    if timeout is not None and timeout <= 0:
        # Already expired: 3.11's own path (cancel what was given, then TimeoutError) has no such window.
        return await _original(fut, timeout)
    async with asyncio.timeout(timeout):
        return await fut


def apply(settings: Settings) -> bool:
    module: Any = asyncio
    module.wait_for = wait_for
    module.tasks.wait_for = wait_for
    return installed()


def installed() -> bool:
    return asyncio.wait_for is wait_for and asyncio.tasks.wait_for is wait_for
