"""Sending a task after its record is stored, or undoing the store if that fails."""

import asyncio
import logging
from collections.abc import Awaitable, Callable

from celery import Celery
from fastapi import HTTPException

log = logging.getLogger(__name__)


async def enqueue_or_undo(
    celery: Celery, task: str, arg: str, task_id: str, timeout_s: float, undo: Callable[[], Awaitable[None]]
) -> None:
    """Not enqueued means not accepted: undo the stored record (so no one polls
    something that will never run) and answer 503 so the client retries."""
    try:
        await asyncio.wait_for(asyncio.to_thread(celery.send_task, task, args=[arg], task_id=task_id), timeout_s)
    except Exception as e:
        await undo()
        log.error("could not enqueue %s %s: %s", task, arg, e)
        raise HTTPException(503, "the job queue is unavailable; nothing was stored, retry later") from e
