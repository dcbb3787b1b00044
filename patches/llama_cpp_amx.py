"""llama.cpp is kept off its AMX kernel, which crashes this build (stack/embedded_lm.py says why).

llama-cpp-python's `Llama` has no argument for llama.cpp's extra buffer
types, so its default model parameters are wrapped to turn them off for
every model the process loads; checked by calling the wrapped defaults.
"""

from typing import Any

from core.settings import Settings


def apply(settings: Settings) -> bool:
    import llama_cpp

    original = llama_cpp.llama_model_default_params
    if getattr(original, "keeps_off_amx", False):
        return True

    def default_params() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    default_params.keeps_off_amx = True  # type: ignore[attr-defined]
    try:
        llama_cpp.llama_model_default_params = default_params
        llama_cpp.llama_cpp.llama_model_default_params = default_params
        took = llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is False
    except AttributeError:
        took = False
    if not took:
        llama_cpp.llama_model_default_params = original
        llama_cpp.llama_cpp.llama_model_default_params = original
    return took
