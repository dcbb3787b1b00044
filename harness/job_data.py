"""Many jobs in a Redis, quickly: written through the very functions the API and the workers call
(`job_create`, `job_start`, `job_end`), in this process, with no LM and no worker. For the listing tests
and benchmark, which need thousands of jobs of several keys, programs and statuses.
"""

import asyncio
import random
import uuid
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis

from api import job_store
from api.auth import Caller
from api.enqueue import TaskMessages
from api.schemas import JobOptions
from core import keys
from core.events import EventType
from core.queue import RUN_JOB_TASK, make_celery
from core.settings import Settings
from worker.job_store import JobStore

# Not expired before they are started (a job's deadline is counted from its creation).
LONG_LIVED = JobOptions(expires_after_s=24 * 3600)
STATUSES = ["queued", "running", "succeeded", "failed", "failed", "cancelled"]
ERRORS = ["LMTimeoutError", "AdapterParseError"]


@dataclass(frozen=True)
class Made:
    id: str
    owner: str  # the caller's name
    created_at: float
    program: str
    status: str
    error: str | None


async def make_jobs(url: str, count: int, start: float, owners: dict[str, str], seed: int = 7) -> list[Made]:
    """`count` jobs, created half a second apart from `start`, of the `owners` (name -> owner id) in turn
    (the first one owns two of three), of the programs qa and triage, left in the statuses above."""
    settings = Settings(redis_url=url)
    redis = aioredis.Redis.from_url(url, decode_responses=True, max_connections=64)
    store = JobStore(redis, settings)
    messages = TaskMessages(make_celery(settings))
    rng = random.Random(seed)
    names = list(owners)

    async def one(i: int) -> Made:
        name = names[0] if i % 3 or len(names) == 1 else names[1 + i % (len(names) - 1)]
        program = "qa" if i % 4 else "triage"
        job_id = uuid.uuid4().hex
        created = start + i * 0.5
        message = messages.build(RUN_JOB_TASK, job_id, [job_id, ""], settings.interactive_queue)
        caller = Caller(name=name, owner=owners[name])
        await job_store.create_job(redis, settings, job_id, program, {"question": f"q{i}"}, LONG_LIVED, created,
                                   message, caller)  # fmt: skip
        status, error = rng.choice(STATUSES), None
        fields = cast(dict[str, str], await redis.hgetall(keys.job(job_id)))
        if status == "cancelled":
            await store.end(job_id, "", fields, EventType.error, {"status": "cancelled"})
        elif status != "queued":
            token = uuid.uuid4().hex
            await store.start(job_id, token, "w", alone=True, waiting={"status": "waiting"})
            if status in ("succeeded", "failed"):
                fields = cast(dict[str, str], await redis.hgetall(keys.job(job_id)))
                error = rng.choice(ERRORS) if status == "failed" else None
                updates = {"status": status, "finished_at": repr(created + 1)}
                if error:
                    updates["error"] = f'{{"type":"{error}","message":"m","retryable":false}}'
                await store.end(job_id, token, fields, EventType.error if error else EventType.result, updates)
        return Made(job_id, name, created, program, status, error)

    made: list[Made] = []
    for chunk in range(0, count, 50):
        made += await asyncio.gather(*(one(i) for i in range(chunk, min(chunk + 50, count))))
    await redis.aclose()
    return made
