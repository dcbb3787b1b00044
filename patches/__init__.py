"""Every patch of a library's internals, in one place, installed explicitly.

Each patch is a module here with an `apply(settings) -> bool` that makes the
change and then checks it took. `install` is called by the entry point (the
worker at Celery's `celeryd_after_setup`, once its logging is set up and
before it consumes; the API in its lifespan, before it serves), never by an
import. For each patch it logs one line:
installed, off (named in `DISABLED_PATCHES`), skipped because the library is
not the version the patch was written for (a warning: the code then runs
unpatched, correct and slower), or did not take (a warning). It never stops
a process.

What each one buys, measured with it on and off, is in bench/results/patches.md.
"""

import importlib
import importlib.metadata
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from core.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Patch:
    name: str
    module: str  # imported only when installed: the API must never import dspy
    what: str
    written_for: tuple[tuple[str, str], ...]  # (distribution, version); ("python", "3.11"): the interpreter's


KOMBU_CLIENTS = Patch(
    "kombu_clients",
    "patches.kombu_clients",
    "kombu's Redis channel keeps one client per connection pool instead of building one per command",
    (("kombu", "5.7.0"),),
)
CELERY_TASK_EVENTS = Patch(
    "celery_task_events",
    "patches.celery_task_events",
    "Celery's buffered task events are published from a thread of their own, not the consumer's loop",
    (("celery", "5.7.0"),),
)
DSPY_CACHES = Patch(
    "dspy_caches",
    "patches.dspy_caches",
    "dspy's per-call model lookups, type adapters, JSON schemas and proxy settings are computed once",
    (("dspy", "3.4.1"),),
)
LM15_CONNECTIONS = Patch(
    "lm15_connections",
    "patches.lm15_connections",
    "dspy's native LM client may open as many connections as the LM's limits allow, not 100 per loop",
    (("dspy", "3.4.1"),),
)
ASYNCIO_WAIT_FOR = Patch(
    "asyncio_wait_for",
    "patches.asyncio_wait_for",
    "asyncio.wait_for awaits in the caller's task (3.12's), so a cancellation that lands as it completes is kept",
    (("python", "3.11"),),
)
ALL = {p.name: p for p in (ASYNCIO_WAIT_FOR, KOMBU_CLIENTS, CELERY_TASK_EVENTS, DSPY_CACHES, LM15_CONNECTIONS)}

WORKER = (ASYNCIO_WAIT_FOR, KOMBU_CLIENTS, CELERY_TASK_EVENTS, DSPY_CACHES, LM15_CONNECTIONS)
API = (ASYNCIO_WAIT_FOR,)


class UnknownPatch(ValueError):
    pass


def check_disabled(settings: Settings) -> None:
    unknown = sorted(set(settings.disabled_patches) - set(ALL))
    if unknown:
        raise UnknownPatch(f"DISABLED_PATCHES names no patch: {', '.join(unknown)} (there are: {', '.join(ALL)})")


def version_mismatch(patch: Patch) -> str | None:
    """What differs from the versions the patch was written for, or None."""
    for distribution, written_for in patch.written_for:
        if distribution == "python":
            running = f"{sys.version_info.major}.{sys.version_info.minor}"
            if running != written_for:
                return f"Python is {running}, the patch was written for {written_for}"
            continue
        try:
            installed = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return f"{distribution} is not installed"
        if installed != written_for:
            return f"{distribution} is {installed}, the patch was written for {written_for}"
    return None


def install(patches: Iterable[Patch], settings: Settings) -> dict[str, str]:
    """Install each patch unless it is turned off or its library moved on; what happened to each, by name."""
    check_disabled(settings)
    outcomes: dict[str, str] = {}
    for patch in patches:
        if patch.name in settings.disabled_patches:
            outcomes[patch.name] = "off"
            log.info("patch %s is off (DISABLED_PATCHES)", patch.name)
            continue
        mismatch = version_mismatch(patch)
        if mismatch is not None:
            outcomes[patch.name] = "skipped"
            log.warning("patch %s skipped: %s; running without it (%s)", patch.name, mismatch, patch.what)
            continue
        took = bool(importlib.import_module(patch.module).apply(settings))
        outcomes[patch.name] = "installed" if took else "did not take"
        if took:
            log.info("patch %s installed: %s", patch.name, patch.what)
        else:
            log.warning("patch %s did not take; running without it (%s)", patch.name, patch.what)
    return outcomes
