"""core/mlflow_uris.py: which MLflow model URIs a registry entry may name, and what a job records."""

import re

import pytest
from pydantic import ValidationError

from core.mlflow_uris import UriKind, parse_mlflow_uri, version_number, version_uri
from core.programs import ProgramEntry, RegistryError, registered_programs
from core.settings import Settings


@pytest.mark.parametrize(
    ("uri", "kind", "parts"),
    [
        ("models:/qa-mlflow/3", UriKind.version, {"model_name": "qa-mlflow", "model_version": "3"}),
        ("models:/qa-mlflow@production", UriKind.alias, {"model_name": "qa-mlflow", "alias": "production"}),
        ("models:/my.model_v2@blue-green", UriKind.alias, {"model_name": "my.model_v2", "alias": "blue-green"}),
        ("runs:/0a1b2c3d4e5f/qa", UriKind.run, {"run_id": "0a1b2c3d4e5f", "path": "qa"}),
        ("runs:/0a1b2c3d4e5f/models/qa", UriKind.run, {"run_id": "0a1b2c3d4e5f", "path": "models/qa"}),
    ],
)
def test_the_three_forms_parse_into_their_parts(uri: str, kind: UriKind, parts: dict[str, str]) -> None:
    parsed = parse_mlflow_uri(uri)

    assert parsed.kind is kind and parsed.uri == uri
    assert {name: getattr(parsed, name) for name in parts} == parts
    assert parsed.moves == (kind is UriKind.alias), "only an alias can point at another version later"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("artifacts/qa.json", "is not an MLflow model URI"),
        ("models:/qa-mlflow", "expected models:/<name>/<version>"),
        ("models:/qa-mlflow/Production", "stages are deprecated"),
        ("models:/qa-mlflow/0", "is not a version number"),
        ("models:/qa-mlflow/3/extra/path", "expected models:/<name>/<version>"),
        ("models:/@production", "expected models:/<name>/<version>"),
        ("models:/qa-mlflow@", "the alias ''"),
        ("models:/qa-mlflow@prod uction", "the alias 'prod uction'"),
        ("runs:/abc", "expected runs:/<run_id>/<path>"),
        ("runs:/abc/", "expected runs:/<run_id>/<path>"),
        ("runs:/abc/../../etc", "expected runs:/<run_id>/<path>"),
        ("runs://abc/qa", "expected runs:/<run_id>/<path>"),
    ],
)
def test_anything_else_is_refused_saying_what_is_wrong(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_mlflow_uri(uri)


def test_a_job_records_the_exact_registered_version_whatever_alias_reached_it() -> None:
    assert version_uri("qa-mlflow", "3") == "models:/qa-mlflow/3"
    assert version_number("models:/qa-mlflow/3") == 3
    assert version_number("runs:/abc/qa") is None
    assert version_number("7") is None, "an artifact's version is not an MLflow one"


def test_a_registry_entry_may_name_an_mlflow_uri_instead_of_a_module() -> None:
    entry = ProgramEntry(mlflow_uri="models:/qa-mlflow@production")

    assert entry.module is None and entry.artifact is None


def test_a_malformed_mlflow_uri_in_the_registry_stops_the_settings_from_loading() -> None:
    with pytest.raises(ValidationError, match="stages are deprecated"):
        Settings(programs={"qa-mlflow": {"mlflow_uri": "models:/qa-mlflow/Staging"}})


@pytest.mark.parametrize("key", ["artifact", "trainset", "devset", "metric"])
def test_an_mlflow_entry_refuses_the_keys_of_local_artifacts(key: str) -> None:
    value = "pkg.mod:fn" if key == "metric" else "x.json"
    with pytest.raises(ValidationError, match=f"has no {key}"):
        ProgramEntry(mlflow_uri="models:/qa-mlflow/1", **{key: value})


def test_an_entry_names_a_module_or_an_mlflow_uri() -> None:
    with pytest.raises(ValidationError, match="needs `module`"):
        ProgramEntry()


def test_the_default_program_cannot_be_served_from_mlflow() -> None:
    settings = Settings(programs={"qa-mlflow": {"mlflow_uri": "models:/qa-mlflow/1"}}, default_program="qa-mlflow")

    with pytest.raises(RegistryError, match="must be served from an artifact"):
        registered_programs(settings)
