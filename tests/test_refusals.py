"""The refusals of the Redis functions are named once (core/refusals.py) and written into the Lua."""

import re

from core import scripts
from core.refusals import Refusal


def test_the_lua_defines_every_refusal_as_python_names_it() -> None:
    names = ", ".join(r.name for r in Refusal)
    values = ", ".join(str(r.value) for r in Refusal)

    assert f"local {names} = {values}" in scripts.LIBRARY


def test_no_function_returns_a_bare_negative_number() -> None:
    """Regression: -3 meant LEASED in jobs.lua and FENCED in events.lua."""
    assert re.findall(r"return\s+\{?\s*-\d", scripts.LIBRARY) == []


def test_every_refusal_is_distinct_and_negative() -> None:
    values = [r.value for r in Refusal]

    assert len(set(values)) == len(values) and all(v < 0 for v in values)
