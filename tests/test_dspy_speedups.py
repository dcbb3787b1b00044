"""worker/dspy_speedups.py: on the pinned dspy every cache is in place and answers as dspy itself would."""

from typing import Literal

import dspy.adapters.utils as adapter_utils
import dspy.clients.capabilities as capabilities
import dspy.clients.costs as costs

from worker import dspy_speedups as speedups


def test_every_cache_is_installed_on_this_dspy() -> None:
    assert speedups.install(), "dspy's layout changed: see the warning, and worker/dspy_speedups.py"
    assert speedups.installed()
    assert capabilities.model_info is costs.model_info is speedups.model_info
    assert adapter_utils.TypeAdapter is speedups.type_adapter


def test_the_caches_answer_what_dspy_answers() -> None:
    speedups.install()
    for provider, model in (("openai", "simulated"), ("openai", "gpt-4o-mini"), ("openai", "gemma-3-270m")):
        assert speedups.model_info(provider, model) == speedups._model_info(provider, model)
        mine = speedups.model_info(provider, model)
        mine["mutated"] = True
        assert "mutated" not in speedups.model_info(provider, model), "each caller gets its own copy"
    for annotation in (list[str], Literal["factual", "opinion"], dict[str, int]):
        assert speedups.json_schema(annotation) == speedups._json_schema(annotation)
        assert speedups.type_adapter(annotation) is speedups.type_adapter(annotation)
    assert speedups.type_adapter(list[str]).validate_python(["a"]) == ["a"]
    assert speedups.getproxies() == speedups._getproxies()
