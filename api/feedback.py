"""Feedback on served answers: a score, a comment, a correction, kept on the job they judge.

`POST /jobs/{id}/feedback` (api/routes/feedback.py) comes here. The key that
owns the job, or an operator's key, may give it, on a job that has ended;
any other job is a 404, as everywhere. Several entries per job are kept,
each with its caller's key name and time. A correction names output fields
of the job's program and their right values, checked against the program's
output schema (the same models its results are documented with): a field
the program does not have, or a value of the wrong type, is a 422 naming it.

The entry, the job's latest score, the listing facets of jobs with feedback
(`feedback:`, `corrected:`, `positive:`) and the per-version counters
(core/metrics.py) are written by one Redis function (core/lua/feedback.lua),
which also queues the entry of a job traced to MLflow for the workers to log
on its trace as an assessment (worker/assessments.py).
What the loop does with them: `GET /programs/{name}/feedback` sums them up
per version, replays compare against corrections (api/replays.py), and
optimizations learn from them (api/optimizations.py).
"""

import time
from typing import Annotated, Any, Literal, cast

import redis.asyncio as aioredis
from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api import job_store
from api.auth import Caller
from api.program_catalog import Catalog, UnknownProgram
from core import keys, scripts
from core.jobs import JobStatus
from core.metrics import FEEDBACK, FEEDBACK_CORRECTIONS, FEEDBACK_SCORE, counter_field, parse_counters
from core.refusals import Refusal
from core.settings import Settings

# Labels a caller may give instead of a number, and the score each stands for.
LABELS: dict[str, float] = {"good": 1.0, "bad": 0.0}
# The version label of feedback on a job that ran no version (it failed before loading one).
NO_VERSION = "none"
# Feedback waiting to be logged on MLflow traces, at most (the oldest are dropped past it).
_ASSESSMENTS_KEPT = 100_000


class FeedbackCreate(BaseModel):
    """Feedback on a finished job."""

    model_config = ConfigDict(extra="forbid")

    score: Annotated[float, Field(ge=0.0, le=1.0)] | Literal["good", "bad"] = Field(
        description="How good the answer was: a number from 0 to 1, or `good` (1) / `bad` (0)."
    )
    comment: str | None = Field(None, max_length=2000, description="Why, in words.")
    correction: dict[str, Any] | None = Field(
        None,
        description="Output fields of the job's program and their right values, typed as its output schema "
        'says (`{"answer": "Paris"}`). Optimizations learn from them; replays compare against them.',
    )

    @property
    def value(self) -> float:
        return LABELS[self.score] if isinstance(self.score, str) else float(self.score)


class FeedbackEntry(BaseModel):
    score: float = Field(description="From 0 to 1.")
    label: Literal["good", "bad"] | None = Field(None, description="When given as a label rather than a number.")
    comment: str | None = None
    correction: dict[str, Any] | None = None
    key: str = Field(description="The name of the API key that gave it.")
    at: float = Field(description="When it was given (unix time).")


class JobFeedback(BaseModel):
    job_id: str
    program: str
    program_version: str | None = Field(description="The version that served the job: what the feedback judges.")
    entries: list[FeedbackEntry] = Field(description="Every entry given, oldest first.")


class VersionFeedback(BaseModel):
    version: str = Field(description=f"The program version that served the judged jobs (`{NO_VERSION}`: none ran).")
    count: int = Field(description="Feedback entries.")
    mean_score: float | None = Field(description="Their mean score, 0 to 1.")
    corrections: int = Field(description="Entries that carried a correction.")
    correction_share: float | None = Field(description="corrections / count.")


class FeedbackSummary(BaseModel):
    program: str
    versions: list[VersionFeedback] = Field(description="Per version that served judged jobs, newest first.")


async def _checked_correction(
    catalog: Catalog, redis: aioredis.Redis, program: str, correction: dict[str, Any]
) -> dict[str, Any]:
    """The correction as the program's output model reads it (JSON-ready), or a 422 naming each wrong field."""
    try:
        found = await catalog.program(program, redis)
    except UnknownProgram as e:
        raise HTTPException(409, f"the job's program {program!r} is no longer registered; nothing to correct") from e
    if found.models is None:
        raise HTTPException(503, f"program {program!r} cannot check a correction now: {found.problem}")
    output = found.models.output
    fields = list(output.model_fields)
    errors: list[dict[str, Any]] = [
        {
            "type": "unknown_field",
            "loc": ("body", "correction", name),
            "msg": f"program {program!r} has no output field {name!r}; its output fields: {fields}",
            "input": value,
        }
        for name, value in correction.items()
        if name not in output.model_fields
    ]
    if errors:
        raise RequestValidationError(errors)
    try:
        parsed = output.model_validate(correction)
    except ValidationError as e:
        raise RequestValidationError(
            [{**error, "loc": ("body", "correction", *error["loc"])} for error in e.errors(include_url=False)]
        ) from None
    checked: dict[str, Any] = parsed.model_dump(mode="json", include=set(correction))
    return checked


async def add(
    redis: aioredis.Redis, settings: Settings, catalog: Catalog, job_id: str, caller: Caller, body: FeedbackCreate
) -> JobFeedback:
    """Store one entry on the job; 404 for a job the caller cannot see, 409 for one still running."""
    fields = await job_store.read_job(redis, job_id, caller)
    if fields is None:
        raise HTTPException(404, f"no job with id {job_id!r} (never issued, or expired)")
    if not JobStatus(fields["status"]).is_terminal:
        raise HTTPException(409, f"job {job_id} is {fields['status']}: feedback is given on a job that has ended")
    program, version = fields["program"], fields.get("program_version") or NO_VERSION
    correction = None
    if body.correction:
        correction = await _checked_correction(catalog, redis, program, body.correction)
    entry = FeedbackEntry(
        score=body.value,
        label=body.score if isinstance(body.score, str) else None,
        comment=body.comment,
        correction=correction,
        key=caller.name,
        at=time.time(),
    )
    labels = {"program": program, "version": version}
    code = await scripts.acall(
        redis,
        "feedback_add",
        [keys.job(job_id), keys.job_feedback(job_id), keys.METRICS_COUNTERS, keys.MLFLOW_ASSESSMENTS],
        [
            entry.model_dump_json(),
            repr(entry.score),
            "1" if correction else "",
            await job_store.owner_of(redis, fields) or "",
            settings.feedback_max_per_job,
            counter_field(FEEDBACK, labels),
            counter_field(FEEDBACK_SCORE, labels),
            counter_field(FEEDBACK_CORRECTIONS, labels),
            _ASSESSMENTS_KEPT,
        ],
    )
    if code == Refusal.NO_JOB:
        raise HTTPException(404, f"no job with id {job_id!r} (never issued, or expired)")
    if code == Refusal.FEEDBACK_FULL:
        raise HTTPException(409, f"job {job_id} already holds {settings.feedback_max_per_job} feedback entries")
    return JobFeedback(
        job_id=job_id,
        program=program,
        program_version=fields.get("program_version"),
        entries=await entries(redis, job_id),
    )


async def entries(redis: aioredis.Redis, job_id: str) -> list[FeedbackEntry]:
    raw = cast(list[str], await redis.lrange(keys.job_feedback(job_id), 0, -1))
    return [FeedbackEntry.model_validate_json(entry) for entry in raw]


async def read(redis: aioredis.Redis, job_id: str, caller: Caller) -> JobFeedback:
    fields = await job_store.read_job(redis, job_id, caller)
    if fields is None:
        raise HTTPException(404, f"no job with id {job_id!r} (never issued, or expired)")
    return JobFeedback(
        job_id=job_id,
        program=fields["program"],
        program_version=fields.get("program_version"),
        entries=await entries(redis, job_id),
    )


def merged_correction(found: list[FeedbackEntry]) -> dict[str, Any]:
    """What the entries say the right output is: each field's latest correction."""
    merged: dict[str, Any] = {}
    for entry in found:
        merged.update(entry.correction or {})
    return merged


def by_version(counters: dict[str, str], program: str) -> dict[str, VersionFeedback]:
    """Each version's feedback, from the metrics counters hash (`HGETALL keys.METRICS_COUNTERS`)."""
    parsed = parse_counters(counters)

    def per_version(name: str) -> dict[str, float]:
        return {s.labels["version"]: s.value for s in parsed[name] if s.labels.get("program") == program}

    count, score, corrected = per_version(FEEDBACK), per_version(FEEDBACK_SCORE), per_version(FEEDBACK_CORRECTIONS)
    found = {}
    for version, n in count.items():
        corrections = int(corrected.get(version, 0))
        found[version] = VersionFeedback(
            version=version,
            count=int(n),
            mean_score=round(score.get(version, 0.0) / n, 4) if n else None,
            corrections=corrections,
            correction_share=round(corrections / n, 4) if n else None,
        )
    return found


def newest_first(versions: list[str]) -> list[str]:
    """Version numbers (as artifacts number them) newest first; any other name after them, by name."""
    return sorted(versions, key=lambda v: (0, -int(v), "") if v.isdigit() else (1, 0, v))


async def summary(redis: aioredis.Redis, program: str) -> FeedbackSummary:
    counters = cast(dict[str, str], await redis.hgetall(keys.METRICS_COUNTERS))
    found = by_version(counters, program)
    return FeedbackSummary(program=program, versions=[found[v] for v in newest_first(list(found))])
