"""Request bodies of the API. Responses reuse `core.jobs.Job` and `core.batches.Batch`.

A program's own input model is built from its artifact (api/program_catalog.py)
on top of `ProgramInput`, which holds the checks every text input gets.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from core.settings import get_settings

# Names the flat bodies of `/jobs` and `/batches` use besides the default program's inputs.
OVERRIDE_NAMES = frozenset(
    {"model", "temperature", "stream", "expires_after_s", "webhook_url", "version", "rollout_key"}
)


def _check_texts(value: Any, field: str, limit: int) -> None:
    """Every string anywhere in the value: valid Unicode, at most `limit` characters."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{field} is not valid Unicode text (it holds a lone surrogate)") from e
        if len(value) > limit:
            raise ValueError(f"{field} is {len(value)} characters; the limit is {limit}")
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _check_texts(getattr(value, name), field, limit)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_texts(key, field, limit)
            _check_texts(item, field, limit)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_texts(item, field, limit)


class ProgramInput(BaseModel):
    """Base of every program's input model."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _text_fits(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name or "input"
        # A required text left blank is a mistake the LM would be paid to answer.
        if isinstance(value, str) and cls.model_fields[name].is_required() and not value.strip():
            raise ValueError(f"{name} must not be empty or blank")
        _check_texts(value, name, get_settings().input_max_chars)
        return value


class LMOverrides(BaseModel):
    """Base of every submission body; bodies refuse fields they do not know."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None,
        description="LM for this job only (a DSPy/LiteLLM model string); must be one the server allows.",
    )
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Sampling temperature for this job only.")
    expires_after_s: float | None = Field(
        None,
        gt=0,
        description="Seconds from submission after which a job (a batch's item) that no worker has started ends "
        "`expired` and never runs. Default: JOB_EXPIRES_AFTER_S for jobs, BATCH_EXPIRES_AFTER_S for batches; "
        "at most JOB_TTL_S.",
    )

    @field_validator("expires_after_s")
    @classmethod
    def _expiry_within_ttl(cls, value: float | None) -> float | None:
        ttl_s = get_settings().job_ttl_s
        if value is not None and value > ttl_s:
            raise ValueError(f"expires_after_s must be at most {ttl_s} (JOB_TTL_S: records are kept that long)")
        return value

    @field_validator("model")
    @classmethod
    def _model_allowed(cls, model: str | None) -> str | None:
        allowed = get_settings().allowed_models
        if model is not None and model not in allowed:
            raise ValueError(f"model {model!r} is not allowed here; allowed: {allowed}")
        return model


class WebhookOption(BaseModel):
    webhook_url: str | None = Field(
        None,
        max_length=2048,
        description="Receiver of one signed event (Standard Webhooks) when this ends: https, on public addresses "
        "unless the server opens others (docs/api.md, Webhooks).",
    )


class VersionOptions(BaseModel):
    """Which version of the program serves the work (core/rollouts.py)."""

    version: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Run this version of the program, whatever its rollout: one some worker holds "
        "(`GET /programs/{name}/versions`), else 422.",
    )
    rollout_key: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Your own key for who asks (a user id): while the program runs a canary, work with the same "
        "key gets the same version. Without it, each job's id decides.",
    )

    def version_fields(self) -> dict[str, str]:
        """What the record keeps of them (core/jobs.py `VERSION_FIELDS`)."""
        found = {"pin_version": self.version, "rollout_key": self.rollout_key}
        return {name: value for name, value in found.items() if value is not None}


class JobOptions(LMOverrides, WebhookOption, VersionOptions):
    """Base of every job submission body."""

    stream: bool = Field(
        True,
        description="Stream output fields token by token (`GET /jobs/{id}/events`). With false the LM is called "
        "without streaming (cheaper); each field then arrives whole, as one `token` event, before the `result`.",
    )


class BatchOptions(LMOverrides, WebhookOption, VersionOptions):
    """Base of every batch submission body."""

    # Off by default: nobody watches a hundred thousand token streams, and an
    # item that does not stream costs the worker a fraction of the CPU.
    stream: bool = Field(
        False,
        description="Whether items stream their output token by token (see `POST /jobs`); off by default, so "
        "each item's fields arrive whole, as one `token` event each.",
    )


class CustomId(BaseModel):
    model_config = ConfigDict(extra="forbid")

    custom_id: str | None = Field(None, max_length=256, description="Your own id for this item, echoed in results.")
