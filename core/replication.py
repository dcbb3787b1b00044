"""Writes that must survive losing the Redis primary: confirmed on replicas before they count.

Redis replicates asynchronously, so a primary that dies can take writes it
already answered with it, and Sentinel promotes a replica that never saw
them. For the writes we answer for (a job or batch the API accepts with
`202`, a cancel, a worker's final result) we send `WAIT` after the write and
count how many replicas hold it (`REDIS_MIN_REPLICAS_ACKED`, at most
`REDIS_REPLICA_ACK_TIMEOUT_S`). Fewer than asked is `NotReplicated`: the API
answers `503` instead of a promise it cannot keep; a worker logs it and goes
on, since a lost result only means the job runs again (its lease expires and
the reaper sends it again).
"""

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core import scripts
from core.settings import Settings


class NotReplicated(RedisError):
    """The primary took the write but too few replicas confirmed it in time; `result` is the write's reply."""

    def __init__(self, acked: int, wanted: int, timeout_s: float, result: Any) -> None:
        super().__init__(f"{acked} of {wanted} replicas confirmed the write within {timeout_s:g} s")
        self.acked = acked
        self.wanted = wanted
        self.result = result


async def acall(
    client: aioredis.Redis, settings: Settings, name: str, keys_: Sequence[str], args: Sequence[scripts.Arg]
) -> Any:
    """`scripts.acall`, confirmed on `settings.replicas_to_ack` replicas (none asked: no WAIT at all)."""
    wanted = settings.replicas_to_ack
    if wanted == 0:
        return await scripts.acall(client, name, keys_, args)
    timeout_s = settings.redis_replica_ack_timeout_s
    result, acked = await scripts.acall_then_wait(client, name, keys_, args, wanted, _ms(timeout_s))
    if acked < wanted:
        raise NotReplicated(acked, wanted, timeout_s, result)
    return result


async def confirm(client: aioredis.Redis, settings: Settings, key: str, ttl_s: int) -> None:
    """Confirm everything written before now, through a write of our own on the connection WAIT asks about.

    For writes made in a transaction, where WAIT cannot follow on the same connection:
    replication is one ordered stream, so replicas that hold this later write (the
    key's TTL set again) hold the earlier ones too."""
    wanted = settings.replicas_to_ack
    if wanted == 0:
        return
    timeout_s = settings.redis_replica_ack_timeout_s
    async with client.pipeline(transaction=False) as pipe:
        pipe.expire(key, ttl_s)
        pipe.execute_command("WAIT", wanted, _ms(timeout_s))
        _, acked = await pipe.execute()
    if int(acked) < wanted:
        raise NotReplicated(int(acked), wanted, timeout_s, None)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
