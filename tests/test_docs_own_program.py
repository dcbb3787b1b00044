"""docs/programs.md's "Serve your own program", followed as written (against the scripted LM).

The files and commands are read out of the page itself, so the section
cannot drift from what works. The reader's folder is a temporary directory
on `PYTHONPATH` standing in for the repository root, with its own
`programs.toml` and artifacts directory, so the checkout stays untouched.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.processes import ROOT
from tests.conftest import private_stack

pytestmark = pytest.mark.e2e

FENCE = re.compile(r"^```(\w+)\n(.*?)^```\n", re.M | re.S)


@dataclass
class Block:
    language: str
    text: str
    before: str  # the prose between the previous block and this one


def section_blocks(heading: str = "## Serve your own program") -> list[Block]:
    """The code blocks of one section of docs/programs.md, each with the prose before it."""
    page = (ROOT / "docs" / "programs.md").read_text()
    start = page.index(heading)
    end = page.find("\n## ", start + 1)
    section = page[start : end if end != -1 else len(page)]
    blocks, last = [], 0
    for match in FENCE.finditer(section):
        blocks.append(Block(match.group(1), match.group(2), section[last : match.start()]))
        last = match.end()
    return blocks


def file_path(block: Block) -> str:
    """Where the page says a block goes: its first comment line, or the last file named before it."""
    first = block.text.splitlines()[0]
    if first.startswith("# ") and first.endswith(".py"):
        return first[2:]
    named = re.findall(r"`([\w./-]+\.(?:json|toml|py))`", block.before)
    assert named, f"no file named before the {block.language} block"
    return named[-1]


def test_serving_your_own_program_as_the_docs_say(lm_api_base: str, tmp_path: Path) -> None:
    blocks = section_blocks()
    files = [b for b in blocks if b.language in ("python", "json", "toml")]
    commands = [b.text.replace("\\\n", " ") for b in blocks if b.language == "sh"]
    assert [b.language for b in files] == ["python", "json", "toml"] and len(commands) == 2
    for block in files:
        target = tmp_path / file_path(block)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.text)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    for shipped in ("qa.json", "triage.json"):
        shutil.copy(ROOT / "artifacts" / shipped, artifacts)

    stack = private_stack(lm_api_base, "redis-own-program")
    stack.extra_env = {
        "PYTHONPATH": str(tmp_path),
        "PROGRAMS_FILE": str(tmp_path / "programs.toml"),
        "ARTIFACTS_DIR": str(artifacts),
    }
    try:
        # Step 4: the optimize command, with this interpreter for `.venv/bin/python`.
        argv = shlex.split(commands[0])
        assert argv[0] == ".venv/bin/python"
        built = subprocess.run(
            [sys.executable, *argv[1:]],
            cwd=ROOT,
            env={**os.environ, **stack.env},
            capture_output=True,
            text=True,
            check=True,
        )
        assert "sentiment.json version 1 (not scored: no devset and metric)" in built.stdout + built.stderr
        demos = json.loads((artifacts / "sentiment.json").read_text())["classify"]["demos"]
        assert [d["sentiment"] for d in demos] == ["positive", "negative", "mixed"]

        # Step 5: the stack, then the curl.
        stack.start_worker()
        stack.start_api()
        curl = shlex.split(commands[1])
        url_path = next(arg for arg in curl if arg.startswith("http://")).removeprefix("http://127.0.0.1:8000")
        body = json.loads(curl[curl.index("-d") + 1])
        with stack.client() as client:
            response = client.post(url_path, json=body)
            listed = client.get("/programs/sentiment").json()

        assert response.status_code == 200, response.text
        job = response.json()
        assert job["status"] == "succeeded", job
        assert job["program"] == "sentiment" and job["program_version"] == "1"
        assert job["result"] == {"sentiment": "positive", "confidence": 0.5}
        assert listed["input_schema"]["required"] == ["review"]
        assert listed["output_schema"]["properties"]["sentiment"]["enum"] == ["positive", "negative", "mixed"]
    finally:
        stack.stop()


@pytest.mark.parametrize("name", ["module", "trainset"])
def test_programs_toml_documents_every_key_the_docs_use(name: str) -> None:
    assert f"# {name} = " in (ROOT / "programs.toml").read_text()
