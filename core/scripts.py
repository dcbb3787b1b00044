"""The service's Lua: one library of Redis functions, loaded once per Redis, called by name.

Every script lives in `core/lua/`, one file per family (webhooks, indexes,
events, limits, submissions, batches, jobs, capacity, feedback, rollouts), each
documenting the KEYS and ARGV of its functions. They
are loaded together as one library (`FUNCTION LOAD`), so a family can call
another's local helpers (every family appends events through
`append_event`) without pasting source into source. Redis keeps functions
with its data (AOF, RDB) and replicates them, so a restarted server or a
promoted replica still has them; a server that lost them (flushed, or a new
one without persistence) answers "Function not found", and the call loads the
library and is sent again.

The library's name and its functions' names carry a hash of its source:
processes of two releases running side by side (a rolling deploy) each call
their own version, and a release never replaces the functions another is
calling.
"""

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from core import keys
from core.batches import TERMINAL_BATCH_STATUSES
from core.jobs import TERMINAL_STATUSES
from core.refusals import lua_constants

# In this order: a family may call the local helpers of those before it.
FAMILIES = (
    "webhooks",
    "indexes",
    "events",
    "limits",
    "submissions",
    "batches",
    "jobs",
    "capacity",
    "feedback",
    "rollouts",
)
_LUA = Path(__file__).with_name("lua")


# Names the Lua cannot know otherwise; everything else it is handed as KEYS.
def _lua_set(names: frozenset[str]) -> str:
    return "{" + ", ".join(f"{name} = true" for name in sorted(names)) + "}"


_CONSTANTS = {
    "__JOBS_DONE__": keys.JOBS_DONE,
    "__COUNTED__": keys.COUNTED_FIELD,
    "__WEBHOOKS_DUE__": keys.WEBHOOKS_DUE,
    "__WEBHOOK_PREFIX__": keys.WEBHOOK_PREFIX,
    "__INDEX_PREFIX__": keys.INDEX_PREFIX,
    "__TERMINAL_STATUSES__": _lua_set(TERMINAL_STATUSES),
    "__TERMINAL_BATCH_STATUSES__": _lua_set(TERMINAL_BATCH_STATUSES),
    "__REFUSALS__": lua_constants(),
}
_REGISTERED = re.compile(r"redis\.register_function\('(\w+)'")

Arg = str | int | float


def _source() -> str:
    text = "\n".join((_LUA / f"{family}.lua").read_text() for family in FAMILIES)
    for placeholder, value in _CONSTANTS.items():
        text = text.replace(placeholder, value)
    return text


_BODY = _source()
VERSION = hashlib.sha1(_BODY.encode()).hexdigest()[:10]
NAMES = frozenset(_REGISTERED.findall(_BODY))
LIBRARY = f"#!lua name=dj_{VERSION}\n" + _REGISTERED.sub(rf"redis.register_function('\1_{VERSION}'", _BODY)


def function_name(name: str) -> str:
    if name not in NAMES:
        raise KeyError(f"no Redis function {name!r} in core/lua/")
    return f"{name}_{VERSION}"


def _missing(error: BaseException) -> bool:
    return isinstance(error, ResponseError) and "Function not found" in str(error)


def _load(client: redis.Redis) -> None:
    try:
        client.function_load(LIBRARY)
    except ResponseError as e:
        if "already exists" not in str(e):
            raise


async def aload(client: aioredis.Redis) -> None:
    """Load the library into this Redis (at start-up, so the first calls need not)."""
    try:
        await client.function_load(LIBRARY)
    except ResponseError as e:
        if "already exists" not in str(e):
            raise


def call(client: redis.Redis, name: str, keys_: Sequence[str], args: Sequence[Arg]) -> Any:
    """FCALL `name`, loading the library first if this Redis does not have it."""
    fn = function_name(name)
    try:
        return client.fcall(fn, len(keys_), *keys_, *args)
    except ResponseError as e:
        if not _missing(e):
            raise
    _load(client)
    return client.fcall(fn, len(keys_), *keys_, *args)


async def acall(client: aioredis.Redis, name: str, keys_: Sequence[str], args: Sequence[Arg]) -> Any:
    """`call` for an asyncio client."""
    fn = function_name(name)
    try:
        return await client.fcall(fn, len(keys_), *keys_, *args)
    except ResponseError as e:
        if not _missing(e):
            raise
    await aload(client)
    return await client.fcall(fn, len(keys_), *keys_, *args)


Call = tuple[str, Sequence[str], Sequence[Arg]]


async def apipeline(client: aioredis.Redis, calls: Sequence[Call]) -> list[Any]:
    """Several calls in one round trip (not a transaction); each result is a value or the exception it raised.

    Calls refused because the library is missing are sent again once it is loaded."""
    results = await _apipe(client, calls)
    again = [i for i, r in enumerate(results) if _missing(r)]
    if again:
        await aload(client)
        for i, result in zip(again, await _apipe(client, [calls[i] for i in again]), strict=True):
            results[i] = result
    return results


async def _apipe(client: aioredis.Redis, calls: Sequence[Call]) -> list[Any]:
    async with client.pipeline(transaction=False) as pipe:
        for name, keys_, args in calls:
            pipe.fcall(function_name(name), len(keys_), *keys_, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
    return results


async def acall_then_wait(
    client: aioredis.Redis, name: str, keys_: Sequence[str], args: Sequence[Arg], replicas: int, timeout_ms: int
) -> tuple[Any, int]:
    """`acall`, then `WAIT replicas timeout_ms` on the same connection, in one round trip.

    WAIT counts the replicas that hold this connection's writes, so it must follow the
    call on its connection: a pipeline keeps both on one. Returns the call's result and
    the replicas that acknowledged it."""
    fn = function_name(name)
    for _ in range(2):
        async with client.pipeline(transaction=False) as pipe:
            pipe.fcall(fn, len(keys_), *keys_, *args)
            pipe.execute_command("WAIT", replicas, timeout_ms)
            result, acked = await pipe.execute(raise_on_error=False)
        if not _missing(result):
            break
        await aload(client)
    for outcome in (result, acked):
        if isinstance(outcome, BaseException):
            raise outcome
    return result, int(acked)
