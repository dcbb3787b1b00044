"""Tasks cancelled while they talk to Redis: how many carry on (patches/asyncio_wait_for.py).

Each task loops over a Redis command (a pipeline, or one command alone) and
is cancelled at a random moment within 4 ms. One still running a second
after its cancel lost it; it is then cancelled until it ends, so none piles
up and slows the next. Whichever `asyncio.wait_for` is in place when this
runs is the one measured: redis-py sends every command through it.
"""

import asyncio
import random

import redis.asyncio as aioredis


async def _talk_forever(client: aioredis.Redis, pipelined: bool) -> None:
    while True:
        if pipelined:
            async with client.pipeline() as pipe:
                pipe.zadd("workers", {"w": 1.0})
                pipe.expire("workers", 10)
                await pipe.execute()
        else:
            await client.zadd("workers", {"w": 1.0})
        await asyncio.sleep(0.001)


async def carried_on(url: str, tasks: int, pipelined: bool, seed: int = 7) -> int:
    """Of `tasks` tasks cancelled one after another, how many were still running a second after the cancel."""
    rng = random.Random(seed)
    client = aioredis.Redis.from_url(url, socket_timeout=5)
    lost = 0
    try:
        for _ in range(tasks):
            task = asyncio.create_task(_talk_forever(client, pipelined))
            await asyncio.sleep(rng.random() * 0.004)
            task.cancel()
            await asyncio.wait([task], timeout=1)
            if not task.done():
                lost += 1
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=1)
    finally:
        await client.aclose()
    return lost
