"""Feedback on a job (`job.feedback(...)`), and what it adds up to per program version.

A score is a number from 0 to 1, or `"good"` / `"bad"`; a correction maps
output fields of the job's program to their right values. See docs/feedback.md.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Score = float | Literal["good", "bad"]


def feedback_body(score: Score, comment: str | None, correction: Mapping[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"score": score}
    if comment is not None:
        body["comment"] = comment
    if correction:
        body["correction"] = dict(correction)
    return body


@dataclass(frozen=True)
class FeedbackEntry:
    score: float  # 0 to 1
    label: str | None  # "good" or "bad" when given as one
    comment: str | None
    correction: dict[str, Any] | None
    key: str  # the name of the API key that gave it
    at: float  # unix time

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "FeedbackEntry":
        return cls(
            score=float(data["score"]),
            label=data.get("label"),
            comment=data.get("comment"),
            correction=data.get("correction"),
            key=str(data.get("key", "")),
            at=float(data.get("at", 0.0)),
        )


@dataclass(frozen=True)
class JobFeedback:
    """Every feedback entry a job holds, oldest first."""

    job_id: str
    program: str
    program_version: str | None  # the version that served the job
    entries: list[FeedbackEntry]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "JobFeedback":
        return cls(
            job_id=data["job_id"],
            program=data["program"],
            program_version=data.get("program_version"),
            entries=[FeedbackEntry.from_json(e) for e in data.get("entries", [])],
        )


@dataclass(frozen=True)
class VersionFeedback:
    version: str
    count: int
    mean_score: float | None
    corrections: int
    correction_share: float | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "VersionFeedback":
        return cls(
            version=str(data["version"]),
            count=int(data.get("count", 0)),
            mean_score=data.get("mean_score"),
            corrections=int(data.get("corrections", 0)),
            correction_share=data.get("correction_share"),
        )
