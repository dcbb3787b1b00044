"""Serving any DSPy program: a program defined only in this test suite, registered through settings.

`tests/programs/extractor.py` has typed inputs (str, int, list[str]) and typed
outputs (Literal, int, float, list[str], a pydantic model, str). Its artifact
is built by `python -m program.optimize`, as a user would, into a directory
of its own; the registry entry goes in through the `PROGRAMS` setting.
"""

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from core.programs import RegistryError, artifact_path, registered_programs
from core.settings import Settings
from harness.processes import ROOT, wait_for
from harness.sse_client import read_events
from tests.conftest import Stack, private_stack
from tests.test_jobs import wait_finished

pytestmark = pytest.mark.e2e

NOTE_INPUT = {"priority": 2, "labels": ["billing", "urgent"]}


def registry(artifacts: Path) -> dict[str, Any]:
    return {
        "extractor": {"module": "tests.programs.extractor:Extractor", "artifact": str(artifacts / "extractor.json")},
        "never-built": {"module": "tests.programs.extractor:Extractor", "artifact": str(artifacts / "nothing.json")},
    }


def build_artifact(stack: Stack, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "program.optimize", "extractor", "--optimizer", "none", *args],
        cwd=ROOT,
        env={**os.environ, **stack.env},
        check=True,
        capture_output=True,
    )


def expected_result(note: str) -> dict[str, Any]:
    """What the scripted LM answers for the extractor's fields, parsed to their types."""
    return {
        "colour": "red",
        "count": 3,
        "score": 0.5,
        "keywords": ["scripted"],
        "address": {"city": "scripted", "zip": 1},
        "summary": f"summary for {note}",
    }


@pytest.fixture(scope="module")
def programs_stack(lm_api_base: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    artifacts = tmp_path_factory.mktemp("artifacts")
    stack = private_stack(lm_api_base, "redis-programs")
    stack.extra_env = {"PROGRAMS": json.dumps(registry(artifacts))}
    build_artifact(stack)
    stack.start_services()
    yield stack
    stack.stop()


@pytest.fixture
def api(programs_stack: Stack) -> Iterator[httpx.Client]:
    with programs_stack.client() as c:
        yield c


def unique_note(text: str) -> str:
    return f"{text} ({uuid.uuid4().hex[:8]})"


def test_openapi_documents_the_test_programs_input_and_output_fields(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]

    body = spec["paths"]["/programs/extractor/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/ExtractorJobCreate"}
    inputs = schemas["ExtractorInput"]
    assert inputs["required"] == ["note", "priority", "labels"]
    assert inputs["properties"]["priority"]["type"] == "integer"
    assert inputs["properties"]["priority"]["description"] == "How much the caller cares, 1 to 5."
    assert inputs["properties"]["labels"] == {
        "type": "array",
        "items": {"type": "string"},
        "title": "Labels",
        "description": "Labels the caller already knows.",
    }
    outputs = schemas["ExtractorOutput"]["properties"]
    assert outputs["colour"]["enum"] == ["red", "green"]
    assert outputs["count"]["type"] == "integer"
    assert outputs["score"]["type"] == "number"
    assert outputs["keywords"]["items"] == {"type": "string"}
    assert outputs["address"]["$ref"] == "#/components/schemas/ExtractorAddress"
    assert schemas["ExtractorAddress"]["properties"]["zip"]["type"] == "integer"
    job_response = spec["paths"]["/programs/extractor/jobs"]["post"]["responses"]["202"]
    assert job_response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ExtractorJob"}
    assert "/programs/extractor/batches" in spec["paths"]


def test_a_job_of_a_program_registered_through_settings_comes_back_typed(api: httpx.Client) -> None:
    note = unique_note("The red door at 1 Main Street")
    response = api.post("/programs/extractor/jobs", params={"wait": 20}, json={"input": {"note": note, **NOTE_INPUT}})

    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded", job
    assert job["program"] == "extractor"
    assert job["program_version"] == "1"
    assert job["input"] == {"note": note, **NOTE_INPUT}
    assert job["result"] == expected_result(note)
    # JSON of each type, not strings that look like one.
    assert isinstance(job["result"]["count"], int) and isinstance(job["result"]["score"], float)
    assert api.get(f"/jobs/{job['id']}").json()["result"] == expected_result(note)


def test_the_typed_job_streams_its_fields_as_token_events(api: httpx.Client) -> None:
    note = unique_note("Stream me [lm:tps=200]")
    submitted = api.post("/programs/extractor/jobs", json={"input": {"note": note, **NOTE_INPUT}})
    assert submitted.status_code == 202, submitted.text

    received = read_events(api, submitted.json()["id"])

    assert received.terminal["type"] == "result"
    text = received.text()
    assert text["summary"] == f"summary for {note}"
    assert json.loads(text["address"]) == {"city": "scripted", "zip": 1}
    assert text["count"] == "3"
    summary_tokens = [e for e in received.events if e["type"] == "token" and e["data"]["field"] == "summary"]
    assert len(summary_tokens) > 1, "a text field streams in more than one piece"


@pytest.mark.parametrize(
    ("payload", "names"),
    [
        ({"input": {"note": "x", "priority": "very", "labels": []}}, "input.priority"),
        ({"input": {"note": "x", "priority": 1, "labels": "billing"}}, "input.labels"),
        ({"input": {"note": "x", "priority": 1}}, "input.labels"),
        ({"input": {"note": "x", "priority": 1, "labels": [], "colour": "red"}}, "input.colour"),
        ({"input": {"note": "   ", "priority": 1, "labels": []}}, "input.note"),
        ({"note": "x", "priority": 1, "labels": []}, "input"),
    ],
)
def test_an_input_the_program_cannot_take_is_422_naming_the_field(
    api: httpx.Client, programs_stack: Stack, payload: dict[str, Any], names: str
) -> None:
    before = programs_stack.redis().dbsize()

    response = api.post("/programs/extractor/jobs", json=payload)

    assert response.status_code == 422, response.text
    assert names in response.json()["message"]
    assert programs_stack.redis().dbsize() == before, "nothing may be stored for a refused input"


def test_a_batch_of_the_registered_program_runs_every_item_typed(api: httpx.Client) -> None:
    notes = [unique_note(f"Batch note {i}") for i in range(3)]
    items = [{"input": {"note": note, **NOTE_INPUT}, "custom_id": f"row-{i}"} for i, note in enumerate(notes)]
    response = api.post("/programs/extractor/batches", json={"items": items})
    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]
    assert response.json()["program"] == "extractor"

    deadline = time.monotonic() + 60
    while api.get(f"/batches/{batch_id}").json()["status"] != "completed":
        assert time.monotonic() < deadline, api.get(f"/batches/{batch_id}").json()
        time.sleep(0.2)

    results = api.get(f"/batches/{batch_id}/results").json()["items"]
    assert [r["custom_id"] for r in results] == ["row-0", "row-1", "row-2"]
    assert [r["result"] for r in results] == [expected_result(note) for note in notes]
    assert api.get(f"/jobs/{results[0]['id']}").json()["input"] == {"note": notes[0], **NOTE_INPUT}


def test_programs_lists_every_program_with_schemas_versions_and_workers(
    api: httpx.Client, programs_stack: Stack
) -> None:
    listed = {p["name"]: p for p in api.get("/programs").json()}

    assert set(listed) == {"qa", "triage", "extractor", "never-built"}
    assert listed["qa"]["default"] and not listed["extractor"]["default"]
    extractor = listed["extractor"]
    assert extractor["available"] and extractor["problem"] is None
    assert extractor["module"] == "tests.programs.extractor:Extractor"
    assert extractor["artifact"]["program"] == "extractor"
    assert extractor["artifact"]["optimizer"] == "none"
    assert extractor["artifact"]["dspy_version"]
    assert extractor["artifact"]["built_at"]
    assert extractor["input_schema"]["required"] == ["note", "priority", "labels"]
    assert set(extractor["output_schema"]["properties"]) == {
        "colour",
        "count",
        "score",
        "keywords",
        "address",
        "summary",
    }
    assert extractor["links"] == {"jobs": "/programs/extractor/jobs", "batches": "/programs/extractor/batches"}
    workers = {w["worker"]: w["version"] for w in extractor["workers"]}
    assert set(workers) == {p.hostname for p in programs_stack.procs if p.hostname}
    assert set(workers.values()) <= {extractor["version"]}
    assert api.get("/programs/extractor").json()["name"] == "extractor"


def test_a_registered_program_without_an_artifact_is_listed_with_the_reason_and_refused_with_503(
    api: httpx.Client,
) -> None:
    listed = api.get("/programs/never-built").json()
    assert not listed["available"]
    assert "python -m program.optimize never-built" in listed["problem"]

    response = api.post("/programs/never-built/jobs", json={"input": {"note": "x"}})

    assert response.status_code == 503
    assert "python -m program.optimize never-built" in response.json()["detail"]


def test_an_unknown_program_is_404(api: httpx.Client) -> None:
    for path in ("/programs/nope/jobs", "/programs/nope/batches"):
        response = api.post(path, json={"input": {}})
        assert response.status_code == 404
        assert "no program named 'nope'" in response.json()["detail"]
    assert api.get("/programs/nope").status_code == 404


def test_a_new_artifact_version_is_served_by_the_running_workers_and_recorded_on_the_job(
    api: httpx.Client, programs_stack: Stack
) -> None:
    redis = programs_stack.redis()
    loads_before = int(redis.hget("dj:program_loads", "extractor") or 0)
    version = str(int(api.get("/programs/extractor").json()["version"]) + 1)

    build_artifact(programs_stack)

    assert api.get("/programs/extractor").json()["version"] == version

    def every_worker_serves_it() -> bool:
        workers = api.get("/programs/extractor").json()["workers"]
        return bool(workers) and all(w["version"] == version for w in workers)

    wait_for(every_worker_serves_it, 10, f"every worker on version {version}")
    note = unique_note("Which version?")
    job = api.post("/programs/extractor/jobs", params={"wait": 20}, json={"input": {"note": note, **NOTE_INPUT}})
    assert job.json()["status"] == "succeeded", job.text
    assert job.json()["program_version"] == version
    # One load per worker process for the new version, none per job.
    assert int(redis.hget("dj:program_loads", "extractor") or 0) == loads_before + 2


def test_an_artifact_built_for_other_fields_is_refused_and_the_loaded_version_keeps_serving(
    api: httpx.Client, programs_stack: Stack
) -> None:
    path = Path(json.loads(programs_stack.extra_env["PROGRAMS"])["extractor"]["artifact"])
    serving = api.get("/programs/extractor").json()["version"]
    original = path.read_text()
    state = json.loads(original)
    state["metadata"]["version"] = 999
    del state["metadata"]["signature"]["input"]["properties"]["priority"]
    try:
        path.write_text(json.dumps(state))

        def every_worker_refused_it() -> bool:
            logs = [p.own_log() for p in programs_stack.procs if p.hostname]
            return all("was built for other fields than the code's signature" in log for log in logs)

        wait_for(every_worker_refused_it, 10, "both workers to look at the new file and refuse it")

        note = unique_note("Still served")
        job = api.post("/programs/extractor/jobs", params={"wait": 20}, json={"input": {"note": note, **NOTE_INPUT}})

        assert job.json()["status"] == "succeeded", job.text
        assert job.json()["program_version"] == serving
        assert {w["version"] for w in api.get("/programs/extractor").json()["workers"]} == {serving}
        logs = "".join(p.own_log() for p in programs_stack.procs if p.hostname)
        assert "was built for other fields than the code's signature" in logs
    finally:
        path.write_text(original)


def test_optimize_builds_any_registered_program_with_data_and_metric_into_a_scored_versioned_artifact(
    programs_stack: Stack, tmp_path: Path
) -> None:
    entry = {
        "module": "tests.programs.extractor:Extractor",
        "trainset": "tests/programs/extractor_train.json",
        "devset": "tests/programs/extractor_dev.json",
        "metric": "tests.programs.extractor:colour_metric",
        "artifact": str(tmp_path / "extractor.json"),
    }
    env = {**os.environ, **programs_stack.env, "PROGRAMS": json.dumps({"extractor": entry})}

    for _ in range(2):
        subprocess.run(
            [sys.executable, "-m", "program.optimize", "extractor", "--demos", "2"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )

    state = json.loads((tmp_path / "extractor.json").read_text())
    metadata = state["metadata"]
    assert metadata["version"] == 2, "each build is one version above the artifact it replaces"
    assert metadata["optimizer"] == "labeled" and metadata["demos"] == 2
    # The scripted LM always answers the first colour, "red": right on half the dev set.
    assert metadata["dev_score"] == 50.0
    assert metadata["devset"] == "tests/programs/extractor_dev.json"
    assert metadata["signature"]["input"]["required"] == ["note", "priority", "labels"]
    assert [demo["colour"] for demo in state["extract"]["demos"]] == ["green", "red"]


def test_the_default_programs_routes_keep_their_flat_bodies(api: httpx.Client) -> None:
    question = unique_note("Still flat?")
    flat = api.post("/jobs", params={"wait": 20}, json={"question": question})
    nested = api.post("/programs/qa/jobs", params={"wait": 20}, json={"input": {"question": question}})

    assert flat.status_code == nested.status_code == 200, (flat.text, nested.text)
    assert flat.json()["program"] == nested.json()["program"] == "qa"
    assert flat.json()["result"] == nested.json()["result"]
    assert wait_finished(api, flat.json()["id"])["program_version"] == api.get("/programs/qa").json()["version"]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('["Bad Name"]\nmodule = "a.b:C"\n', "use lowercase letters"),
        ('[ok]\nmodule = "not an import path"\n', "is not an import path"),
        ('[ok]\nmodule = "a.b:C"\nunknown_key = 1\n', "unknown_key"),
        ('[my_p]\nmodule = "a.b:C"\n[my-p]\nmodule = "a.b:C"\n', "differ only in '-' and '_'"),
        ("module = 'a.b:C'\n", "must be a table"),
        ("[ok\n", "PROGRAMS_FILE"),
    ],
)
def test_a_malformed_programs_file_is_refused_with_the_reason(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "programs.toml").write_text(toml)

    with pytest.raises(RegistryError, match=re.escape(message)):
        registered_programs(Settings(programs_file=str(tmp_path / "programs.toml")))


def test_a_malformed_programs_setting_stops_the_settings_from_loading() -> None:
    with pytest.raises(ValidationError, match="is not an import path"):
        Settings(programs={"ok": {"module": "nope"}})


def test_a_default_program_that_is_not_registered_is_refused() -> None:
    with pytest.raises(RegistryError, match="DEFAULT_PROGRAM 'nope' is not registered"):
        registered_programs(Settings(default_program="nope"))


def test_programs_file_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "programs.toml").write_text('[mine]\nmodule = "pkg.mod:Mine"\ntrainset = "data/train.json"\n')

    entry = registered_programs(Settings(programs_file=str(tmp_path / "programs.toml")))["mine"]

    assert entry.trainset == str(tmp_path / "data" / "train.json")
    assert artifact_path(Settings(), "mine", entry) == Path("artifacts/mine.json")
