"""Feedback logged on the jobs' MLflow traces, as assessments (with MLFLOW_TRACING on).

The API queues the feedback on a traced job (core/lua/feedback.lua); every
worker that traces drains that queue, a few entries a second, on a thread
(MLflow's client blocks): the score as a feedback assessment named
`user_feedback` (its comment as the rationale), a correction as an
expectation named `correction`, each with the key's name as its human
source and the job's id in its metadata. One entry that MLflow refuses (the
trace not exported yet, the server away) goes back to the queue to be tried
again, up to `_ATTEMPTS` times, and never holds up the others.
"""

import asyncio
import json
import logging
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core import keys
from worker.tracing import JobTracing

log = logging.getLogger(__name__)

_EVERY_S = 1.0
_BATCH = 50
_ATTEMPTS = 10


def log_assessment(header: dict[str, Any], entry: dict[str, Any]) -> None:
    """The entry on its trace (blocking: MLflow's client)."""
    import mlflow
    from mlflow.entities import AssessmentSource

    source = AssessmentSource(source_type="HUMAN", source_id=str(entry.get("key") or "unknown"))
    metadata = {"dspy_jobs.job_id": header["job_id"], "dspy_jobs.program": header["program"]}
    if entry.get("label"):
        metadata["dspy_jobs.label"] = entry["label"]
    mlflow.log_feedback(
        trace_id=header["trace_id"],
        name="user_feedback",
        value=float(entry["score"]),
        rationale=entry.get("comment"),
        source=source,
        metadata=metadata,
    )
    if entry.get("correction"):
        mlflow.log_expectation(
            trace_id=header["trace_id"], name="correction", value=entry["correction"], source=source, metadata=metadata
        )


class Assessments:
    def __init__(self, client: aioredis.Redis, tracing: JobTracing) -> None:
        self._redis = client
        self._tracing = tracing

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(_EVERY_S)
            if not self._tracing.ready:
                continue
            try:
                await self.drain()
            except RedisError as e:
                log.warning("MLflow assessments: Redis does not answer (%s); trying again", e)

    async def drain(self) -> int:
        """Log what waits now, a batch at a time; how many were logged."""
        taken = cast(list[str] | None, await self._redis.lpop(keys.MLFLOW_ASSESSMENTS, _BATCH)) or []
        logged = 0
        for raw in taken:
            header_json, _, entry_json = raw.partition("\n")
            header: dict[str, Any] = json.loads(header_json)
            try:
                await asyncio.to_thread(log_assessment, header, json.loads(entry_json))
                logged += 1
            except Exception as e:
                attempts = int(header.get("attempts", 0)) + 1
                if attempts >= _ATTEMPTS:
                    log.warning("job %s: feedback not logged on trace %s: %s", header["job_id"], header["trace_id"], e)
                    continue
                again = json.dumps({**header, "attempts": attempts}) + "\n" + entry_json
                await self._redis.rpush(keys.MLFLOW_ASSESSMENTS, again)
        return logged
