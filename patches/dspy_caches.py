"""Per-call costs of dspy 3.4 that only need paying once per process.

Found with py-spy in a worker running jobs that do not stream (scenario 2 of
`python -m bench`), where the first two were a third of the worker's CPU per
job, and with cProfile around `acall` of the `qa` program, where the last
two were 14% of the call.

- Model metadata (`dspy.clients.model_metadata.model_info`): every LM call
  looks its model up in LiteLLM's price table three times (capabilities for
  the adapter, twice to estimate the cost). For a model the table does not
  list (any local or self-hosted model, the embedded default included) each
  lookup scans every entry: 3.5 ms a lookup on the benchmark machine. The
  table is loaded once per process and never changes afterwards, so the
  answer for a (provider, model, namespaces) cannot change either: computed
  once, and each caller gets its own deep copy, as from the original.
- Pydantic `TypeAdapter`s in the adapter's helpers (`dspy.adapters.utils`):
  one is built for every input and demo value formatted and every output
  parsed (about 90 us each, two dozen per job of the `qa` program). A
  `TypeAdapter` depends only on its type and is safe to reuse, so they are
  kept per type.
- The JSON schema of a non-string output field's type
  (`dspy.adapters.utils._get_json_schema`), rebuilt by pydantic for every
  system message: kept per type (its one caller only serializes it).
- The proxy settings DSPy's native HTTP client reads from the environment
  (`urllib.request.getproxies`, which decodes every environment variable)
  for every request: read once. A process that changes its proxy variables
  after starting would not see it; this one never does.

dspy imports these names into the modules that use them, so those module
attributes are what gets replaced. `apply()` first checks they are what it
expects and does nothing on a dspy laid out differently (the calls then stay
as they were: correct, slower), which a test notices.

The benchmark's baseline (`bench/baseline_app.py`) applies them too, so a
comparison with it measures the queue, not these.
"""

import copy
import functools
import importlib
from collections.abc import Callable, Hashable
from typing import Any

import dspy.adapters.utils as adapter_utils
import dspy.clients.capabilities as capabilities
import dspy.clients.costs as costs
import dspy.clients.model_metadata as model_metadata
from pydantic import TypeAdapter

from core.settings import Settings

# Imported by name: a static import of dspy's vendored package makes mypy read all of dspy.
lm15_proxy = importlib.import_module("dspy._vendor.lm15.transports._proxy")

_METADATA_USERS = (model_metadata, capabilities, costs)
_model_info: Callable[..., dict[str, Any]] = model_metadata.model_info


@functools.lru_cache(maxsize=1024)
def _lookup(provider: str | None, model: str, namespaces: tuple[Hashable, ...] | None) -> dict[str, Any]:
    return _model_info(provider, model, namespaces=namespaces)


def model_info(provider: str | None, model: str, *, namespaces: Any = None) -> dict[str, Any]:
    """`dspy.clients.model_metadata.model_info`, memoized."""
    try:
        found = _lookup(provider, model, tuple(namespaces) if namespaces is not None else None)
    except TypeError:  # something unhashable: ask the original
        return _model_info(provider, model, namespaces=namespaces)
    return copy.deepcopy(found)


@functools.lru_cache(maxsize=512)
def _type_adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def type_adapter(annotation: Any) -> TypeAdapter[Any]:
    """`pydantic.TypeAdapter(annotation)`, one per type."""
    try:
        return _type_adapter(annotation)
    except TypeError:  # an unhashable annotation
        return TypeAdapter(annotation)


_json_schema: Callable[[Any], dict[str, Any]] = adapter_utils._get_json_schema
_getproxies: Callable[[], dict[str, str]] = lm15_proxy.getproxies


@functools.lru_cache(maxsize=512)
def _schema(field_type: Any) -> dict[str, Any]:
    return _json_schema(field_type)


def json_schema(field_type: Any) -> dict[str, Any]:
    """`dspy.adapters.utils._get_json_schema`, one per type. Shared: its caller only serializes it."""
    try:
        return _schema(field_type)
    except TypeError:  # an unhashable type
        return _json_schema(field_type)


@functools.cache
def getproxies() -> dict[str, str]:
    """`urllib.request.getproxies`, read once."""
    return _getproxies()


# (module, attribute, dspy's own, ours)
_REPLACED: list[tuple[Any, str, Any, Any]] = [
    *((module, "model_info", _model_info, model_info) for module in _METADATA_USERS),
    (adapter_utils, "TypeAdapter", TypeAdapter, type_adapter),
    (adapter_utils, "_get_json_schema", _json_schema, json_schema),
    (lm15_proxy, "getproxies", _getproxies, getproxies),
]


def apply(settings: Settings | None = None) -> bool:
    """Route dspy's calls through the caches; False when dspy is not laid out as expected (then untouched)."""
    if not all(getattr(module, name, None) in (theirs, ours) for module, name, theirs, ours in _REPLACED):
        return False
    for module, name, _, ours in _REPLACED:
        setattr(module, name, ours)
    return installed()


def installed() -> bool:
    return all(getattr(module, name) is ours for module, name, _, ours in _REPLACED)
