"""`import dspy_jobs_client` needs neither dspy nor pydantic: only `RemoteProgram` does (no processes)."""

import importlib
import sys

import pytest


def test_the_client_imports_without_dspy_or_pydantic_and_only_remote_program_needs_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [m for m in sys.modules if m == "dspy_jobs_client" or m.startswith("dspy_jobs_client.")]:
        monkeypatch.delitem(sys.modules, name)
    # A None entry makes `import dspy` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "dspy", None)
    monkeypatch.setitem(sys.modules, "pydantic", None)

    client = importlib.import_module("dspy_jobs_client")

    assert callable(client.Client) and callable(client.AsyncClient) and callable(client.verify_webhook)
    with pytest.raises(ImportError):
        _ = client.RemoteProgram
