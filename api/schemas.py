"""Request bodies of the API. Responses reuse `core.jobs.Job`."""

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.settings import get_settings


class QAInput(BaseModel):
    """The `qa` program's input."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(description="The question to answer. Must not be blank.")

    @field_validator("question")
    @classmethod
    def _question_fits(cls, question: str) -> str:
        limit = get_settings().question_max_chars
        if not question.strip():
            raise ValueError("question must not be empty or blank")
        try:
            question.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError("question is not valid Unicode text (it holds a lone surrogate)") from e
        if len(question) > limit:
            raise ValueError(f"question is {len(question)} characters; the limit is {limit}")
        return question


class LMOverrides(BaseModel):
    model: str | None = Field(
        None,
        description="LM for this job only (a DSPy/LiteLLM model string); must be one the server allows.",
    )
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Sampling temperature for this job only.")

    @field_validator("model")
    @classmethod
    def _model_allowed(cls, model: str | None) -> str | None:
        allowed = get_settings().allowed_models
        if model is not None and model not in allowed:
            raise ValueError(f"model {model!r} is not allowed here; allowed: {allowed}")
        return model


class JobCreate(QAInput, LMOverrides):
    """A question for the `qa` program, with optional LM overrides for this job only."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"question": "Why is the sky blue?"}]})

    stream: bool = Field(
        True,
        description="Stream output fields token by token (`GET /jobs/{id}/events`). With false the LM is called "
        "without streaming (cheaper); each field then arrives whole, as one `token` event, before the `result`.",
    )


class BatchItem(QAInput):
    custom_id: str | None = Field(None, max_length=256, description="Your own id for this item, echoed in results.")


class BatchCreate(LMOverrides):
    """Many questions at once; `model` and `temperature` apply to every item."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"items": [{"question": "What is 2+2?", "custom_id": "row-1"}]}]},
    )

    items: list[BatchItem] = Field(min_length=1, description="The items, each the input of one job.")
    # Off by default: nobody watches a hundred thousand token streams, and an
    # item that does not stream costs the worker a fraction of the CPU.
    stream: bool = Field(
        False,
        description="Whether items stream their output token by token (see `POST /jobs`); off by default, so "
        "each item's fields arrive whole, as one `token` event each.",
    )
