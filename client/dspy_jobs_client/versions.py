"""A program's versions side by side, and its rollout: canary, promote, roll back. See docs/feedback.md."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RolloutRecord:
    """Which versions serve a program's jobs: `stable` (None: as registered), `candidate` for `percent` of them."""

    program: str
    stable: str | None
    candidate: str | None
    percent: float
    auto_rollback: dict[str, Any] | None  # {"margin": ..., "min_jobs": ...} when on
    history: list[dict[str, Any]]  # what happened, newest last: {"at", "action", "version", "percent", "reason", "by"}
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RolloutRecord":
        return cls(
            program=data["program"],
            stable=data.get("stable"),
            candidate=data.get("candidate"),
            percent=float(data.get("percent", 0.0)),
            auto_rollback=data.get("auto_rollback"),
            history=list(data.get("history", [])),
            raw=data,
        )


@dataclass(frozen=True)
class VersionRecord:
    """One version of a program as `GET /programs/{name}/versions` compares them."""

    version: str
    source: str  # artifact, registered, served
    role: str | None  # stable, candidate, or None
    share: float  # percent of new jobs it gets now
    loaded_by: list[str]
    metadata: dict[str, Any] | None
    stats: dict[str, Any]  # jobs, failure_rate, parse_failure_rate, latency_mean_s, tokens_mean, feedback_mean, ...

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "VersionRecord":
        return cls(
            version=str(data["version"]),
            source=str(data.get("source", "")),
            role=data.get("role"),
            share=float(data.get("share", 0.0)),
            loaded_by=list(data.get("loaded_by", [])),
            metadata=data.get("metadata"),
            stats=dict(data.get("stats", {})),
        )


def canary_body(version: str, percent: float, auto_rollback: Mapping[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"version": version, "percent": percent}
    if auto_rollback is not None:
        body["auto_rollback"] = dict(auto_rollback)
    return body


@dataclass(frozen=True)
class ReplayRecord:
    """Past jobs' inputs run again against another version or model, compared (see docs/feedback.md)."""

    id: str
    program: str
    status: str  # its batch's: queued, running, completed, ...
    summary: dict[str, Any]  # compared, identical, different, fields, corrections, metric
    items: list[dict[str, Any]]  # per past job: baseline, candidate, same, correction, agreement, metric
    raw: dict[str, Any]

    @property
    def done(self) -> bool:
        return self.status in ("completed", "cancelled", "expired", "failed")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ReplayRecord":
        return cls(
            id=data["id"],
            program=data["program"],
            status=str(data["status"]),
            summary=dict(data.get("summary", {})),
            items=list(data.get("items", [])),
            raw=data,
        )


@dataclass(frozen=True)
class OptimizationRecord:
    """A candidate version being built from feedback; `result` once it succeeded (see docs/feedback.md)."""

    id: str
    program: str
    status: str  # a job's: queued, running, succeeded, failed, cancelled, expired
    result: dict[str, Any] | None  # candidate_version, current_version, scores, train_jobs, holdout_jobs, lm_calls
    error: dict[str, Any] | None
    item_id: str  # the job that runs it: its events are the optimization's progress
    raw: dict[str, Any]

    @property
    def done(self) -> bool:
        return self.status not in ("queued", "running")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "OptimizationRecord":
        return cls(
            id=data["id"],
            program=data["program"],
            status=str(data["status"]),
            result=data.get("result"),
            error=data.get("error"),
            item_id=data["item_id"],
            raw=data,
        )
