"""Request bodies of the API. Responses reuse `core.jobs.Job`."""

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.settings import get_settings


class JobCreate(BaseModel):
    """A question for the `qa` program, with optional LM overrides for this job only."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"question": "Why is the sky blue?"}]},
    )

    question: str = Field(description="The question to answer. Must not be blank.")
    model: str | None = Field(
        None,
        description="LM for this job only (a DSPy/LiteLLM model string); must be one the server allows.",
    )
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Sampling temperature for this job only.")

    @field_validator("question")
    @classmethod
    def _question_fits(cls, question: str) -> str:
        limit = get_settings().question_max_chars
        if not question.strip():
            raise ValueError("question must not be empty or blank")
        if len(question) > limit:
            raise ValueError(f"question is {len(question)} characters; the limit is {limit}")
        return question

    @field_validator("model")
    @classmethod
    def _model_allowed(cls, model: str | None) -> str | None:
        allowed = get_settings().allowed_models
        if model is not None and model not in allowed:
            raise ValueError(f"model {model!r} is not allowed here; allowed: {allowed}")
        return model
