"""The limits each model gets from the settings (core/capacity.py): pure logic, no processes but one."""

import subprocess
import sys

import pytest
from pydantic import ValidationError

from core.capacity import DEFAULT_MAX_IN_FLIGHT, endpoint_for, endpoints, limits_for
from core.settings import EMBEDDED_LM_MODEL, Settings
from harness.processes import ROOT


def test_the_embedded_model_gets_its_servers_slots_wherever_it_is_served() -> None:
    assert limits_for(Settings()).max_in_flight == Settings().embedded_lm_slots
    assert limits_for(Settings(lm_api_base="http://lm:8080/v1", embedded_lm_slots=6)).max_in_flight == 6


def test_a_batch_on_the_embedded_models_default_slots_leaves_one_to_interactive_jobs() -> None:
    limits = limits_for(Settings())
    assert limits.bulk_max_in_flight == limits.max_in_flight - 1 >= 1


def test_any_other_model_gets_the_default_and_every_allowed_model_has_limits() -> None:
    settings = Settings(lm_model="openai/gpt-4o-mini", lm_allowed_models=[EMBEDDED_LM_MODEL, "openai/gpt-4o"])
    limits = endpoints(settings)
    assert set(limits) == {"openai/gpt-4o-mini", EMBEDDED_LM_MODEL, "openai/gpt-4o"}
    assert limits["openai/gpt-4o-mini"][1].max_in_flight == DEFAULT_MAX_IN_FLIGHT
    assert limits[EMBEDDED_LM_MODEL][1].max_in_flight == settings.embedded_lm_slots


def test_limits_of_lm_model_come_from_the_plain_settings_and_lm_limits_wins() -> None:
    settings = Settings(
        lm_model="openai/gpt-4o-mini",
        lm_max_in_flight=64,
        lm_rpm=500,
        lm_allowed_models=["openai/gpt-4o"],
        lm_limits={"openai/gpt-4o": {"max_in_flight": 8, "tpm": 30000}},
    )
    own = limits_for(settings)
    assert (own.max_in_flight, own.rpm, own.tpm) == (64, 500, None)
    other = limits_for(settings, "openai/gpt-4o")
    assert (other.max_in_flight, other.rpm, other.tpm) == (8, None, 30000)
    overridden = Settings(lm_model="openai/x", lm_max_in_flight=64, lm_limits={"openai/x": {"max_in_flight": 2}})
    assert limits_for(overridden).max_in_flight == 2


@pytest.mark.parametrize(
    ("max_in_flight", "bulk"), [(1, 1), (2, 1), (4, 3), (9, 8), (10, 9), (19, 18), (20, 18), (1024, 922)]
)
def test_bulk_leaves_the_interactive_reserve_rounded_down_but_one_slot_at_least(max_in_flight: int, bulk: int) -> None:
    settings = Settings(lm_model="openai/x", lm_max_in_flight=max_in_flight)
    assert limits_for(settings).bulk_max_in_flight == bulk


def test_no_interactive_reserve_lets_bulk_take_every_slot() -> None:
    settings = Settings(lm_model="openai/x", lm_max_in_flight=4, lm_interactive_reserve=0)
    assert limits_for(settings).bulk_max_in_flight == 4


def test_the_same_model_at_another_api_base_is_another_endpoint() -> None:
    a = endpoint_for(Settings(lm_model="openai/x", lm_api_base="http://a/v1"))
    b = endpoint_for(Settings(lm_model="openai/x", lm_api_base="http://b/v1"))
    assert a.id != b.id and len(a.id) == 16


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"lm_max_in_flight": 0}, "lm_max_in_flight"),
        ({"lm_rpm": -5}, "lm_rpm"),
        ({"lm_limits": {EMBEDDED_LM_MODEL: {"tpm": 0}}}, "tpm"),
        ({"lm_limits": {"openai/nobody-uses-me": {"max_in_flight": 4}}}, "LM_LIMITS names openai/nobody-uses-me"),
        ({"lm_interactive_reserve": 1.0}, "lm_interactive_reserve"),
    ],
)
def test_a_bad_limit_is_refused_naming_the_setting(settings: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        Settings(**settings)  # type: ignore[arg-type]


@pytest.mark.e2e
def test_the_api_does_not_start_with_a_bad_limit_and_says_which() -> None:
    run = subprocess.run(
        [sys.executable, "-c", "import api.main"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "LM_MAX_IN_FLIGHT": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "lm_max_in_flight" in run.stderr and "greater than 0" in run.stderr
