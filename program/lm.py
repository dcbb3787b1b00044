"""Building the LM and the adapter from settings: one place, used by the worker and the optimizer.

The adapter is chosen per model (`LM_ADAPTER`). `chat`, DSPy's ChatAdapter,
writes each output field under a header: cheap, and streamed field by field
as it is written. `json`, DSPy's JSONAdapter, asks the LM for the
signature's JSON schema as a structured output, so a server that constrains
decoding to it (llama.cpp does) can only write output that parses. `auto`
picks `json` for the embedded model and `chat` for any other.
`python -m bench.adapters` compares the two on the embedded model, with the
instructions now reaching it (stack/embedded_lm.py): on 2026-12-04, `json`
parsed 18 of 18 held-out questions (`bench/qa_heldout.json`) and 29 of 30
arithmetic ones, `chat` 18 and 28, its failures a `question_type` outside
the signature's choices (`logical`, `literal`), which the grammar rules
out; `json`'s one failure was an answer cut at the token limit.
"""

import logging

import dspy

from core.settings import EMBEDDED_LM_MODEL, Settings

# LiteLLM logs every call at INFO: noise on the hot path of every job.
logging.getLogger("LiteLLM").setLevel(logging.WARNING)

# DSPy's completion marker: every request stops there or at the token limit,
# so a base model cannot ramble on to its context limit.
COMPLETION_MARKER = "[[ ## completed ## ]]"


class ServiceLM(dspy.LM):
    """DSPy's LM, told whether its server takes a JSON schema as a structured output (`structured_outputs`,
    None: ask LiteLLM's model map, which does not know local models such as the embedded one)."""

    structured_outputs: bool | None = None

    @property
    def supports_response_schema(self) -> bool:
        if self.structured_outputs is not None:
            return self.structured_outputs
        return bool(super().supports_response_schema)


def adapter_name(settings: Settings, model: str | None = None) -> str:
    """`chat` or `json`: what `LM_ADAPTER` means for `model` (module docstring)."""
    if settings.lm_adapter != "auto":
        return settings.lm_adapter
    return "json" if (model or settings.lm_model) == EMBEDDED_LM_MODEL else "chat"


def build_lm(
    settings: Settings,
    model: str | None = None,
    temperature: float | None = None,
    lm_class: type[ServiceLM] = ServiceLM,
) -> ServiceLM:
    api_key = settings.lm_api_key.get_secret_value() if settings.lm_api_key else None
    if api_key is None and settings.lm_api_base:
        # OpenAI-compatible local servers ignore the key, but the client insists on one.
        api_key = "no-key"
    lm = lm_class(
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
    # llama.cpp's server takes OpenAI's JSON schema form and decodes under it, which LiteLLM cannot know.
    if lm.model == EMBEDDED_LM_MODEL:
        lm.structured_outputs = True
    return lm


def build_adapter(settings: Settings, model: str | None = None) -> dspy.Adapter:
    """The model's adapter. ChatAdapter without its JSON fallback: the fallback doubles the latency of a parse
    failure, and without a schema a local server returns `{}`."""
    if adapter_name(settings, model) == "json":
        return dspy.JSONAdapter()
    return dspy.ChatAdapter(use_json_adapter_fallback=False)
