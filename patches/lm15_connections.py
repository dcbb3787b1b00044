"""dspy's native LM client (its vendored lm15) may open as many connections as the LM's limits allow.

lm15 opens at most 100 connections per event loop, and a worker process runs
every job on one loop (worker/engine.py), so without this a worker could
never have more than 100 LM calls in flight, whatever `LM_MAX_IN_FLIGHT`
says. Every client dspy builds from then on gets a cap of the largest
`max_in_flight` of the configured models (at least lm15's own default).
"""

import importlib
from typing import Any

import dspy.clients.execution as dspy_execution

from core.capacity import endpoints
from core.settings import Settings

# Imported by name: a static import of dspy's vendored package makes mypy read all of dspy.
ROUTER_CONFIG: Any = importlib.import_module("dspy._vendor.lm15.router").RouterConfig
DEFAULT_MAX_CONNECTIONS: int = importlib.import_module("dspy._vendor.lm15.transports").DEFAULT_MAX_CONNECTIONS


def apply(settings: Settings) -> bool:
    connections = max(limits.max_in_flight for _, limits in endpoints(settings).values())
    config: Any = getattr(dspy_execution, "RouterConfig", None)
    if config is not ROUTER_CONFIG and getattr(config, "raised_to", None) is None:
        return False
    cap = max(connections, DEFAULT_MAX_CONNECTIONS)

    def router_config(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("transport") is None:
            kwargs.setdefault("max_connections", cap)
        return ROUTER_CONFIG(*args, **kwargs)

    router_config.raised_to = cap  # type: ignore[attr-defined]
    dspy_execution.RouterConfig = router_config
    return raised_to() == cap


def raised_to() -> int | None:
    return getattr(getattr(dspy_execution, "RouterConfig", None), "raised_to", None)
