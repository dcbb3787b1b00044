"""Re-optimization as a job of the service: examples from feedback, a candidate built in the bulk lane.

`POST /programs/{name}/optimizations` chooses the training examples here:
past succeeded jobs of the program (by filter, api/past_jobs.py) that feedback
vouched for, each as its input and the output it should have had (its answer
with its corrections laid over it); a job with neither a correction nor a
positive latest score teaches nothing and is left out. With fewer than two
usable examples (one to learn from, one to hold out) it is a 422 saying how
many it found. Otherwise it submits one batch of one item carrying the spec
(core/optimizations.py), which a bulk worker runs under the LM's capacity,
in turn with other batches, like any bulk work (worker/optimization.py).

The optimization is that item: its id is its batch's, its progress the
item's event stream (`status` events with `"status": "optimizing"`), its
cancel the item's cancel, its result the item's result.
"""

import redis.asyncio as aioredis
from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field

from api import job_store, past_jobs, rollouts
from api.auth import Caller
from api.past_jobs import JobFilter, PastJob
from api.program_catalog import Catalog, UnknownProgram
from api.program_versions import stable_version
from api.schemas import BatchOptions
from api.submission import Submission
from core import rollouts as rules
from core.batches import OPTIMIZATION_KEY, item_id
from core.jobs import JobError, JobStatus
from core.optimizations import (
    REASONING,
    MetricName,
    OptimizationResult,
    OptimizationSpec,
    Optimizer,
    TrainingExample,
)
from core.settings import Settings

# Examples an optimization needs at least: one to learn from, one to hold out.
MIN_EXAMPLES = 2


class OptimizationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    optimizer: Optimizer = Field(
        "labeled",
        description="`labeled`: the examples as few-shot demos (what a small base model needs); `bootstrap`: DSPy's "
        "BootstrapFewShot; `mipro`: DSPy's MIPROv2 (instructions and demos); `gepa`: DSPy's GEPA (reflective "
        "instruction search; needs an LM that can reflect on its own traces).",
    )
    trainset: JobFilter = Field(
        default_factory=lambda: JobFilter(feedback="any"),
        description="Which past jobs to learn from; of those, the ones with a correction or a positive score.",
    )
    metric: MetricName = Field(
        "agreement",
        description="`agreement`: the share of the fields feedback vouched for that an answer gets exactly right; "
        "`program`: the program's own metric.",
    )
    demos: int = Field(3, ge=1, le=16, description="Few-shot demos the candidate keeps.")
    holdout: float = Field(0.34, ge=0.1, le=0.9, description="The share of examples held out to score both versions.")
    budget_calls: int = Field(200, ge=1, le=100_000, description="LM calls it may make, building and scoring.")
    seed: int = Field(0, description="Which examples are held out (a shuffle by this seed).")


class OptimizationLinks(BaseModel):
    self: str
    events: str = Field(description="Its progress: the item's event stream.")
    cancel: str


class Optimization(BaseModel):
    id: str
    program: str
    status: JobStatus
    optimizer: Optimizer
    metric: MetricName
    examples: int = Field(description="Usable examples it was given (learned from plus held out).")
    current_version: str | None = Field(description="The version it improves on (null: the one as registered).")
    result: OptimizationResult | None = Field(description="Once it succeeded: what it used and the two scores.")
    error: JobError | None = None
    item_id: str = Field(description="The job that runs it (`GET /jobs/{id}`).")
    links: OptimizationLinks


def _example(job: PastJob) -> TrainingExample | None:
    """What the job teaches, if feedback vouched for it."""
    correction = job.correction
    if correction:
        judged = list(correction)
    elif job.score is not None and job.score >= 0.5:
        judged = [name for name in job.result if name != REASONING]
    else:
        return None
    return TrainingExample(job_id=job.id, input=job.input, label={**job.result, **correction}, judged=judged)


async def create(submission: Submission, catalog: Catalog, name: str, body: OptimizationCreate) -> Optimization:
    redis = submission.redis
    try:
        program = await catalog.program(name, redis)
    except UnknownProgram as e:
        raise HTTPException(404, str(e)) from e
    if not program.available:
        raise HTTPException(503, f"program {name!r} cannot be served: {program.problem}")
    if program.mlflow_uri is not None and program.mlflow_uri.startswith("runs:/"):
        raise HTTPException(
            422,
            f"program {name!r} is a run's model ({program.mlflow_uri}): no registered model to "
            "add a candidate version to",
        )
    if body.metric == "program" and not program.entry.metric:
        raise HTTPException(422, f"program {name!r} has no metric in its registry entry; use metric `agreement`")
    chosen = await past_jobs.select(redis, submission.caller, name, body.trainset)
    examples = [example for example in map(_example, chosen) if example is not None]
    if len(examples) < MIN_EXAMPLES:
        raise HTTPException(
            422,
            f"an optimization needs at least {MIN_EXAMPLES} usable examples (succeeded jobs with a correction or a "
            f"positive score: one to learn from, one to hold out); the filter found {len(examples)} "
            f"({len(chosen)} jobs matched)",
        )
    rollout, _ = await rules.read(redis, name)
    current = stable_version(program, rollout)
    if current is not None and program.mlflow_uri is None:
        rollouts.check_loaded(program, current)
    spec = OptimizationSpec(
        optimizer=body.optimizer,
        metric=body.metric,
        demos=body.demos,
        holdout=body.holdout,
        budget_calls=body.budget_calls,
        seed=body.seed,
        current_version=rollout.stable,
        examples=examples,
    )
    item = {OPTIMIZATION_KEY: spec.model_dump(mode="json")}
    batch = await submission.batch(name, [item], BatchOptions(stream=False))
    submission.response.headers["Location"] = f"/programs/{name}/optimizations/{batch.id}"
    return await read(redis, submission.caller, name, batch.id)


async def read(redis: aioredis.Redis, caller: Caller, name: str, optimization_id: str) -> Optimization:
    job_id = item_id(optimization_id, 0)
    fields = await job_store.read_job(redis, job_id, caller)
    raw_spec = fields.get("optimization") if fields else None
    if fields is None or raw_spec is None or fields["program"] != name:
        raise HTTPException(404, f"no optimization of {name} with id {optimization_id!r} (never made, or expired)")
    spec = OptimizationSpec.model_validate_json(raw_spec)
    status = JobStatus(fields["status"])
    result = fields.get("result") if status is JobStatus.succeeded else None
    base = f"/programs/{name}/optimizations/{optimization_id}"
    return Optimization(
        id=optimization_id,
        program=name,
        status=status,
        optimizer=spec.optimizer,
        metric=spec.metric,
        examples=len(spec.examples),
        current_version=spec.current_version,
        result=OptimizationResult.model_validate_json(result) if result else None,
        error=JobError.model_validate_json(fields["error"]) if fields.get("error") else None,
        item_id=job_id,
        links=OptimizationLinks(self=base, events=f"/jobs/{job_id}/events", cancel=f"{base}/cancel"),
    )


async def cancel(
    redis: aioredis.Redis, settings: Settings, caller: Caller, name: str, optimization_id: str
) -> Optimization:
    found = await read(redis, caller, name, optimization_id)
    await job_store.cancel_job(redis, settings, found.item_id, caller)
    return await read(redis, caller, name, optimization_id)
