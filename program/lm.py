"""Building the LM from settings: one place, used by the worker and the optimizer."""

import logging

import dspy

from core.settings import Settings

# LiteLLM logs every call at INFO: noise on the hot path of every job.
logging.getLogger("LiteLLM").setLevel(logging.WARNING)

# DSPy's completion marker: every request stops there or at the token limit,
# so a base model cannot ramble on to its context limit.
COMPLETION_MARKER = "[[ ## completed ## ]]"


def build_lm(
    settings: Settings,
    model: str | None = None,
    temperature: float | None = None,
    lm_class: type[dspy.LM] = dspy.LM,
) -> dspy.LM:
    api_key = settings.lm_api_key.get_secret_value() if settings.lm_api_key else None
    if api_key is None and settings.lm_api_base:
        # OpenAI-compatible local servers ignore the key, but the client insists on one.
        api_key = "no-key"
    return lm_class(
        model or settings.lm_model,
        api_base=settings.lm_api_base,
        api_key=api_key,
        temperature=settings.lm_temperature if temperature is None else temperature,
        max_tokens=settings.lm_max_tokens,
        stop=[COMPLETION_MARKER],
        timeout=settings.lm_timeout_s,
        num_retries=settings.lm_num_retries,
        cache=settings.lm_cache,
        engine=settings.effective_lm_engine,
    )


def build_adapter() -> dspy.ChatAdapter:
    """ChatAdapter without the JSON fallback: the fallback doubles the latency of
    a parse failure, and with local grammar-constrained servers it returns `{}`."""
    return dspy.ChatAdapter(use_json_adapter_fallback=False)
