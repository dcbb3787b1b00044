"""docs/feedback.md's loop with the Python client, run as written against the scripted LM.

The block is read out of the page, so the page cannot drift from what works;
only the API's address is the test stack's. The scripted LM answers the
same whatever the demos, so the loop runs through without improving: what
is checked is that every step the page shows works, in the order it shows.
"""

import contextlib
import io
import re
from collections.abc import Iterator

import httpx
import pytest

from harness.processes import ROOT
from tests.conftest import Stack, private_stack

pytestmark = pytest.mark.e2e

FENCE = re.compile(r"^```python\n(.*?)^```\n", re.M | re.S)


def client_block() -> str:
    page = (ROOT / "docs" / "feedback.md").read_text()
    start = page.index("## The loop with the Python client")
    end = page.find("\n## ", start + 1)
    blocks = FENCE.findall(page[start:end])
    assert len(blocks) == 1
    return str(blocks[0])


@pytest.fixture(scope="module")
def docs_stack(lm_api_base: str) -> Iterator[Stack]:
    stack = private_stack(lm_api_base, "redis-docs-feedback")
    stack.start_services()
    yield stack
    stack.stop()


def test_the_loop_with_the_python_client_runs_as_the_page_shows(docs_stack: Stack) -> None:
    code = client_block().replace("http://127.0.0.1:8000", docs_stack.api_url)
    printed = io.StringIO()

    with contextlib.redirect_stdout(printed):
        exec(compile(code, "docs/feedback.md", "exec"), {})

    lines = printed.getvalue().splitlines()
    assert lines[0].startswith("version 1 mean score 0.0 corrected 3")
    assert lines[1].startswith("candidate 2 held-out scores")
    assert lines[2].startswith("replay 3 identical,")
    assert lines[-1] == "stable now 2"
    rollout = httpx.get(f"{docs_stack.api_url}/programs/qa/rollout").json()
    assert [e["action"] for e in rollout["history"]] == ["canary", "promote"]
