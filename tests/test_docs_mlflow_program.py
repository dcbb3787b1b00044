"""docs/programs.md's "Programs from MLflow", followed as written (a real MLflow server, the scripted LM).

The files and commands are read out of the page itself, so the section
cannot drift from what works. Where the page says `http://127.0.0.1:5000`
the test's own tracking server stands in; the reader's `programs.toml`
lives in a temporary directory (`PROGRAMS_FILE`), and `log_qa.py` too, run
from the repository root as the page says (on `PYTHONPATH`, as a script
in the root would be). `make up` is stood in for by a worker and the API,
as in tests/test_docs_own_program.py, with aliases looked up every second
instead of ten so step 5 does not wait.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from harness.mlflow_server import QUIET_ENV
from harness.processes import ROOT, wait_for
from tests.conftest import private_stack
from tests.test_docs_own_program import section_blocks
from tests.test_jobs import expected_result, unique

pytestmark = pytest.mark.e2e

DOCS_TRACKING_URI = "http://127.0.0.1:5000"


def env_and_argv(command: str) -> tuple[dict[str, str], list[str]]:
    """`A=1 B=2 cmd args` -> ({A: 1, B: 2}, [cmd, args])."""
    words = shlex.split(command.replace("\\\n", " "))
    env = {}
    while words and re.match(r"^[A-Z_]+=", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return env, words


def test_serving_a_program_from_mlflow_as_the_docs_say(
    lm_api_base: str, mlflow_tracking_uri: str, tmp_path: Path
) -> None:
    blocks = section_blocks("## Programs from MLflow")
    assert [b.language for b in blocks] == ["python", "sh", "toml", "sh", "sh"]
    script, log_command, toml, up_command, curl_command = blocks
    assert script.text.splitlines()[0] == "# log_qa.py"
    (tmp_path / "log_qa.py").write_text(script.text)
    assert "`programs.toml`" in toml.before
    (tmp_path / "programs.toml").write_text(toml.text)

    # Step 1: log and register, with this interpreter for `.venv/bin/python`.
    log_env, argv = env_and_argv(log_command.text)
    assert log_env == {"MLFLOW_TRACKING_URI": DOCS_TRACKING_URI} and argv == [".venv/bin/python", "log_qa.py"]

    def log_a_version() -> str:
        done = subprocess.run(
            [sys.executable, str(tmp_path / "log_qa.py")],
            cwd=ROOT,
            env={**os.environ, **QUIET_ENV, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": mlflow_tracking_uri},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    assert "qa-mlflow version 1 is @production" in log_a_version()

    # Step 3: the settings of `make up`'s command line, on a worker and the API.
    up_env, argv = env_and_argv(up_command.text)
    assert argv == ["make", "up"]
    assert up_env == {"MLFLOW_TRACKING_URI": DOCS_TRACKING_URI, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}
    stack = private_stack(lm_api_base, "redis-docs-mlflow")
    stack.extra_env = {
        **QUIET_ENV,
        **up_env,
        "MLFLOW_TRACKING_URI": mlflow_tracking_uri,
        "MLFLOW_REFRESH_S": "1",
        "PROGRAMS_FILE": str(tmp_path / "programs.toml"),
    }
    try:
        stack.start_worker()
        stack.start_api()

        # Step 4: the curl, with the question made unique to this run.
        curl = shlex.split(curl_command.text.replace("\\\n", " "))
        url_path = next(arg for arg in curl if arg.startswith("http://")).removeprefix("http://127.0.0.1:8000")
        assert url_path == "/programs/qa-mlflow/jobs?wait=60"
        body = json.loads(curl[curl.index("-d") + 1])
        body["input"]["question"] = unique(body["input"]["question"])
        with stack.client() as client:
            response = client.post(url_path, json=body)
            assert response.status_code == 200, response.text
            job = response.json()
            assert job["status"] == "succeeded", job
            assert job["program"] == "qa-mlflow" and job["program_version"] == "models:/qa-mlflow/1"
            assert job["result"] == expected_result(body["input"]["question"])
            listed = client.get("/programs/qa-mlflow").json()
            assert listed["input_schema"]["required"] == ["question"]

            # Step 5: log again; the alias moves, and the running worker serves the new version.
            assert "qa-mlflow version 2 is @production" in log_a_version()

            def served() -> bool:
                workers = client.get("/programs/qa-mlflow").json()["workers"]
                return bool(workers) and all(w["version"] == "models:/qa-mlflow/2" for w in workers)

            wait_for(served, 30, "the worker on version 2")
            again = client.post(url_path, json={"input": {"question": unique("And now?")}}).json()
            assert again["status"] == "succeeded", again
            assert again["program_version"] == "models:/qa-mlflow/2"
    finally:
        stack.stop()
