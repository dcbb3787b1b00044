"""Replays: the inputs of past jobs run again against another version (or model), compared input by input.

`POST /programs/{name}/replays` chooses past succeeded jobs by filter
(api/past_jobs.py) and submits their inputs as one batch (api/submission.py,
so the key's quotas, LM capacity and fairness apply as to any batch), pinned
to the version asked for (else the rollout decides, item by item) and on the
model asked for. Each item carries the past job's answer and the reference
it is judged by: that answer with the feedback's corrections laid over it
(`core.batches.REPLAY_KEY`). A replay's id is its batch's.

`GET /programs/{name}/replays/{id}` compares, from the items' records:
whether each output field came out the same, whether the new answer and the
past one agree with each correction, and, for a program with a metric, both
answers' scores against the reference, which the worker computed
(worker/replay_scores.py). This is how a version is judged on production
inputs before it serves anyone.
"""

import json
import time
from typing import Any, cast

import redis.asyncio as aioredis
from fastapi import HTTPException
from pydantic import BaseModel, Field

from api import batch_store, past_jobs
from api.auth import Caller
from api.past_jobs import JobFilter, PastJob
from api.program_catalog import Catalog, UnknownProgram
from api.rollouts import check_loaded
from api.schemas import BatchOptions, LMOverrides
from api.submission import Submission
from core import keys
from core.batches import REPLAY_KEY, BatchCounts, BatchStatus, batch_from_fields, item_id


class ReplayCreate(LMOverrides):
    """Past jobs to run again, and what to run them on: `model` and `temperature` as for a batch."""

    jobs: JobFilter = Field(default_factory=JobFilter, description="Which past succeeded jobs to run again.")
    version: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The version to run them on (one some worker holds); null: as the rollout decides.",
    )


class Against(BaseModel):
    version: str | None
    model: str | None


class FieldComparison(BaseModel):
    same: int
    different: int


class CorrectionAgreement(BaseModel):
    items: int = Field(description="Items whose past job was corrected.")
    fields: int = Field(description="Corrected fields among them.")
    candidate_agrees: int = Field(description="Corrected fields the new answer gets right.")
    baseline_agrees: int = Field(description="Corrected fields the past answer got right.")


class MetricComparison(BaseModel):
    items: int = Field(description="Items both answers were scored on.")
    candidate_mean: float
    baseline_mean: float


class ReplaySummary(BaseModel):
    compared: int = Field(description="Items with both answers.")
    identical: int = Field(description="Items whose every output field came out the same.")
    different: int
    fields: dict[str, FieldComparison] = Field(description="Per output field.")
    corrections: CorrectionAgreement
    metric: MetricComparison | None = Field(description="The program's metric, when it has one that scores them.")


class ReplayItem(BaseModel):
    job_id: str = Field(description="The past job.")
    item_id: str = Field(description="Its replay, a job of the replay's batch.")
    status: str
    input: dict[str, Any]
    baseline: dict[str, Any] = Field(description="The past job's answer.")
    baseline_version: str | None
    candidate: dict[str, Any] | None = Field(description="The new answer, once it succeeded.")
    candidate_version: str | None
    same: dict[str, bool] = Field(description="Per output field: whether the new answer's equals the past one's.")
    correction: dict[str, Any] | None = Field(description="What feedback said the right output is.")
    candidate_agrees: dict[str, bool] | None = Field(description="Per corrected field: the new answer has it right.")
    baseline_agrees: dict[str, bool] | None
    metric: float | None = Field(description="The program's metric of the new answer against the reference.")
    baseline_metric: float | None
    error: dict[str, Any] | None = None


class Replay(BaseModel):
    id: str
    program: str
    status: BatchStatus = Field(description="Its batch's status.")
    batch_id: str
    against: Against
    jobs: JobFilter
    created_at: float
    counts: BatchCounts
    summary: ReplaySummary
    items: list[ReplayItem] = Field(description="In the order the past jobs were chosen (newest first).")


def _reference(job: PastJob) -> dict[str, Any]:
    return {**job.result, **job.correction}


def _stored_item(job: PastJob) -> dict[str, Any]:
    replay = {
        "job_id": job.id,
        "baseline": job.result,
        "baseline_version": job.version,
        "correction": job.correction or None,
        "reference": _reference(job),
    }
    return {**job.input, "custom_id": job.id, REPLAY_KEY: replay}


async def create(submission: Submission, catalog: Catalog, program_name: str, body: ReplayCreate) -> Replay:
    redis = submission.redis
    try:
        program = await catalog.program(program_name, redis)
    except UnknownProgram as e:
        raise HTTPException(404, str(e)) from e
    if not program.available:
        raise HTTPException(503, f"program {program_name!r} cannot be served: {program.problem}")
    if body.version is not None:
        check_loaded(program, body.version)
    chosen = await past_jobs.select(redis, submission.caller, program_name, body.jobs)
    if not chosen:
        raise HTTPException(422, f"no succeeded job of {program_name} matches the filter (found 0): nothing to replay")
    options = BatchOptions(
        model=body.model,
        temperature=body.temperature,
        expires_after_s=body.expires_after_s,
        version=body.version,
        stream=False,
    )
    batch = await submission.batch(program_name, [_stored_item(job) for job in chosen], options)
    # redis-py's mapping type is invariant in its keys.
    record: Any = {
        "id": batch.id,
        "program": program_name,
        "jobs": body.jobs.model_dump_json(),
        "against": Against(version=body.version, model=body.model).model_dump_json(),
        "created_at": repr(time.time()),
    }
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.replay(batch.id), mapping=record)
        pipe.expire(keys.replay(batch.id), submission.settings.job_ttl_s)
        await pipe.execute()
    submission.response.headers["Location"] = f"/programs/{program_name}/replays/{batch.id}"
    return await read(redis, submission.caller, program_name, batch.id)


_ITEM_FIELDS = [
    "status",
    "input",
    "result",
    "program_version",
    "replay",
    "replay_metric",
    "replay_baseline_metric",
    "error",
]


async def read(redis: aioredis.Redis, caller: Caller, program: str, replay_id: str) -> Replay:
    record = cast(dict[str, str], await redis.hgetall(keys.replay(replay_id)))
    if not record or record["program"] != program:
        raise HTTPException(404, f"no replay of {program} with id {replay_id!r} (never made, or expired)")
    batch = await batch_store.read_batch(redis, replay_id, caller)
    total = int(batch["total"])
    async with redis.pipeline(transaction=False) as pipe:
        for index in range(total):
            pipe.hmget(keys.job(item_id(replay_id, index)), _ITEM_FIELDS)
        pipe.lrange(keys.batch_inputs(replay_id), 0, -1)
        *rows, stored_inputs = await pipe.execute()
    items = [
        _item(replay_id, index, row, stored_inputs[index] if index < len(stored_inputs) else None)
        for index, row in enumerate(rows)
    ]
    return Replay(
        id=replay_id,
        program=program,
        status=BatchStatus(batch["status"]),
        batch_id=replay_id,
        against=Against.model_validate_json(record["against"]),
        jobs=JobFilter.model_validate_json(record["jobs"]),
        created_at=float(record["created_at"]),
        counts=batch_from_fields(batch).counts,
        summary=_summary(items),
        items=items,
    )


def _item(replay_id: str, index: int, row: list[str | None], stored: str | None) -> ReplayItem:
    status, raw_input, result, version, raw_replay, metric, baseline_metric, error = row
    if raw_replay is None:
        # Not picked yet: described from what the batch stored.
        stored_item = json.loads(stored or "{}")
        replay = stored_item.pop(REPLAY_KEY, {})
        stored_item.pop("custom_id", None)
        inputs, status = stored_item, status or "queued"
    else:
        replay, inputs = json.loads(raw_replay), json.loads(raw_input or "{}")
    baseline: dict[str, Any] = replay.get("baseline", {})
    correction: dict[str, Any] | None = replay.get("correction")
    candidate = json.loads(result) if result else None
    same = {name: _equal(baseline.get(name), candidate.get(name)) for name in baseline} if candidate else {}
    return ReplayItem(
        job_id=replay.get("job_id", ""),
        item_id=item_id(replay_id, index),
        status=str(status),
        input=inputs,
        baseline=baseline,
        baseline_version=replay.get("baseline_version"),
        candidate=candidate,
        candidate_version=version,
        same=same,
        correction=correction,
        candidate_agrees=_agreement(correction, candidate),
        baseline_agrees=_agreement(correction, baseline),
        metric=float(metric) if metric else None,
        baseline_metric=float(baseline_metric) if baseline_metric else None,
        error=json.loads(error) if error else None,
    )


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _agreement(correction: dict[str, Any] | None, answer: dict[str, Any] | None) -> dict[str, bool] | None:
    if not correction or answer is None:
        return None
    return {name: _equal(value, answer.get(name)) for name, value in correction.items()}


def _summary(items: list[ReplayItem]) -> ReplaySummary:
    compared = [item for item in items if item.candidate is not None]
    fields: dict[str, FieldComparison] = {}
    for item in compared:
        for name, same in item.same.items():
            counted = fields.setdefault(name, FieldComparison(same=0, different=0))
            if same:
                counted.same += 1
            else:
                counted.different += 1
    corrected = [item for item in compared if item.correction]
    scored = [item for item in compared if item.metric is not None and item.baseline_metric is not None]
    identical = sum(all(item.same.values()) for item in compared)
    return ReplaySummary(
        compared=len(compared),
        identical=identical,
        different=len(compared) - identical,
        fields=fields,
        corrections=CorrectionAgreement(
            items=len(corrected),
            fields=sum(len(item.correction or {}) for item in corrected),
            candidate_agrees=sum(sum((item.candidate_agrees or {}).values()) for item in corrected),
            baseline_agrees=sum(sum((item.baseline_agrees or {}).values()) for item in corrected),
        ),
        metric=MetricComparison(
            items=len(scored),
            candidate_mean=round(sum(item.metric or 0.0 for item in scored) / len(scored), 4),
            baseline_mean=round(sum(item.baseline_metric or 0.0 for item in scored) / len(scored), 4),
        )
        if scored
        else None,
    )
