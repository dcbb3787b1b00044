"""The patches of library internals (patches/): on the pinned versions each one takes, each can be turned
off, one written for another version skips itself, and importing the service installs none."""

import asyncio
import logging
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import dspy.adapters.utils as adapter_utils
import dspy.clients.capabilities as capabilities
import dspy.clients.costs as costs
import pytest
from kombu.transport import redis as kombu_redis

import patches
from core.settings import Settings
from harness.cancellations import carried_on
from harness.processes import ROOT, start_redis
from patches import asyncio_wait_for, dspy_caches, kombu_clients, lm15_connections


def test_every_patch_takes_on_the_pinned_versions() -> None:
    everything = patches.WORKER
    hosted = Settings(lm_model="openai/hosted", lm_api_base="http://127.0.0.1:9/v1")  # 1024 calls in flight

    outcomes = patches.install(everything, hosted)

    assert outcomes == {p.name: "installed" for p in everything}
    assert dspy_caches.installed()
    assert capabilities.model_info is costs.model_info is dspy_caches.model_info
    assert adapter_utils.TypeAdapter is dspy_caches.type_adapter
    assert lm15_connections.raised_to() == 1024


def test_every_patch_is_registered_with_its_module() -> None:
    assert set(patches.ALL) == {p.name for p in patches.WORKER}
    for patch in patches.ALL.values():
        assert patches.version_mismatch(patch) is None, patch.name


def test_a_patch_named_in_disabled_patches_is_not_installed(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(disabled_patches="lm15_connections,dspy_caches")
    caplog.set_level(logging.INFO, logger="patches")

    outcomes = patches.install((patches.LM15_CONNECTIONS, patches.DSPY_CACHES), settings)

    assert outcomes == {"lm15_connections": "off", "dspy_caches": "off"}
    assert "patch dspy_caches is off" in caplog.text


def test_a_patch_written_for_another_version_skips_itself_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    elsewhere = patches.Patch("dspy_elsewhere", "patches.dspy_caches", "-", (("dspy", "0.0.1"),))

    outcomes = patches.install((elsewhere,), Settings())

    assert outcomes == {"dspy_elsewhere": "skipped"}
    assert "dspy is 3.4.1, the patch was written for 0.0.1" in caplog.text


def test_a_patch_of_the_interpreter_written_for_another_python_skips_itself() -> None:
    later = patches.Patch("asyncio_later", "patches.asyncio_wait_for", "-", (("python", "3.99"),))

    assert (
        patches.version_mismatch(later)
        == f"Python is {sys.version_info[0]}.{sys.version_info[1]}, the patch was written for 3.99"
    )


def test_an_unknown_name_in_disabled_patches_is_refused_naming_the_setting() -> None:
    with pytest.raises(patches.UnknownPatch, match="DISABLED_PATCHES names no patch: kombu_typo"):
        patches.install(patches.WORKER, Settings(disabled_patches="kombu_typo"))


def test_the_dspy_caches_answer_what_dspy_answers() -> None:
    dspy_caches.apply()
    for provider, model in (("openai", "simulated"), ("openai", "gpt-4o-mini"), ("openai", "gemma-3-270m")):
        assert dspy_caches.model_info(provider, model) == dspy_caches._model_info(provider, model)
        mine = dspy_caches.model_info(provider, model)
        mine["mutated"] = True
        assert "mutated" not in dspy_caches.model_info(provider, model), "each caller gets its own copy"
    for annotation in (list[str], Literal["factual", "opinion"], dict[str, int]):
        assert dspy_caches.json_schema(annotation) == dspy_caches._json_schema(annotation)
        assert dspy_caches.type_adapter(annotation) is dspy_caches.type_adapter(annotation)
    assert dspy_caches.type_adapter(list[str]).validate_python(["a"]) == ["a"]
    assert dspy_caches.getproxies() == dspy_caches._getproxies()


def test_kombu_channels_keep_one_client_per_pool() -> None:
    kombu_clients.apply(Settings())

    class Channel:
        pool = object()
        made = 0

        def _create_client(self) -> object:
            Channel.made += 1
            return object()

    channel = Channel()
    with kombu_clients.conn_or_acquire(channel) as first, kombu_clients.conn_or_acquire(channel) as second:
        assert first is second
    channel.pool = object()  # kombu replaces its pool after a connection error
    with kombu_clients.conn_or_acquire(channel) as third:
        assert third is not first
    assert Channel.made == 2
    assert kombu_redis.Channel.conn_or_acquire is kombu_clients.conn_or_acquire


@pytest.mark.e2e
def test_importing_the_worker_and_the_api_installs_no_patch() -> None:
    check = (
        "import dspy.clients.execution as e, dspy.adapters.utils as u;"
        "original = e.RouterConfig, u.TypeAdapter;"
        "import worker.celery_app, api.main;"
        "assert (e.RouterConfig, u.TypeAdapter) == original, 'a patch was installed on import'"
    )
    run = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)

    assert run.returncode == 0, run.stderr[-2000:]


WaitFor = Callable[[Awaitable[Any], float | None], Awaitable[Any]]


async def _cancellations(wait_for: WaitFor) -> list[str]:
    """A caller awaiting a call that completes within a loop step, cancelled 0, 1, 2, ... steps after it began;
    for each cancellation the task accepted, what became of the caller."""
    outcomes = []
    for steps in range(8):

        async def caller() -> str:
            await wait_for(asyncio.sleep(0), 10)
            return "carried on"

        task = asyncio.create_task(caller())
        for _ in range(steps):
            await asyncio.sleep(0)
        accepted = task.cancel()
        try:
            outcome = await task
        except asyncio.CancelledError:
            outcome = "cancelled"
        if accepted:
            outcomes.append(outcome)
    return outcomes


def test_python_311s_wait_for_loses_a_cancellation_that_lands_as_the_call_completes() -> None:
    outcomes = asyncio.run(_cancellations(asyncio_wait_for._original))

    assert "carried on" in outcomes, "the interpreter's wait_for keeps every cancellation: the patch is not needed"


def test_the_patched_wait_for_keeps_every_cancellation_and_still_times_out() -> None:
    async def timings() -> None:
        with pytest.raises(TimeoutError):
            await asyncio_wait_for.wait_for(asyncio.sleep(5), 0.01)
        with pytest.raises(TimeoutError):
            await asyncio_wait_for.wait_for(asyncio.sleep(5), 0)
        assert await asyncio_wait_for.wait_for(asyncio.sleep(0, "done"), None) == "done"

    outcomes = asyncio.run(_cancellations(asyncio_wait_for.wait_for))

    assert set(outcomes) == {"cancelled"}
    asyncio.run(timings())


@pytest.mark.e2e
def test_a_task_cancelled_while_it_talks_to_redis_always_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """What went wrong: redis-py sends every command through wait_for, and a worker's heartbeat cancelled at
    its drain kept beating, so the worker never exited after SIGTERM."""
    monkeypatch.setattr(asyncio, "wait_for", asyncio.wait_for)
    monkeypatch.setattr(asyncio.tasks, "wait_for", asyncio.tasks.wait_for)
    assert asyncio_wait_for.apply(Settings())
    proc, url = start_redis("redis-patches")

    try:
        assert asyncio.run(carried_on(url, tasks=300, pipelined=True)) == 0
    finally:
        if proc is not None:
            proc.stop()
