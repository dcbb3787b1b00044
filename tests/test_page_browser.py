"""The page at `/`, served by the API and used in a real headless Chromium.

The browser is Debian's `/usr/bin/chromium`, driven by `playwright-core` from
npm (`tests/browser/page_flow.mjs`); `bash tests/browser/install.sh` installs
both. A machine without them fails this test: it never skips.
"""

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from stack.processes import ARTIFACTS, ROOT
from tests.conftest import Stack
from tests.test_jobs import expected_result, unique

pytestmark = pytest.mark.e2e

BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ARTIFACTS / "page.png"
FLOW_TIMEOUT_S = 240
INSTALL = "run `bash tests/browser/install.sh` (Debian's chromium via apt-get, playwright-core via npm ci)"


def test_index_page_is_served(client: httpx.Client) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert '<form id="ask-form"' in html
    assert '<textarea id="question"' in html
    assert '<button id="submit" type="submit">' in html
    # Everything comes from this server: the machine may have no internet.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    for asset, media_type in (("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert served.headers["content-type"].startswith(media_type), asset
        assert f'"{asset}"' in html
    # Model output reaches the page only as text.
    script = client.get("/static/app.js").text
    assert not re.search(r"\.(inner|outer)HTML\s*\+?=|insertAdjacentHTML|document\.write", script)
    assert "/" not in client.get("/openapi.json").json()["paths"]


def missing_browser_tools() -> list[str]:
    missing = []
    if shutil.which("node") is None:
        missing.append("node (Node.js 20+)")
    if not CHROMIUM.exists():
        missing.append(str(CHROMIUM))
    if not (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").exists():
        missing.append("playwright-core in tests/browser/node_modules")
    return missing


def run_page_flow(api_url: str, question: str) -> dict[str, Any]:
    missing = missing_browser_tools()
    if missing:
        pytest.fail(f"the browser test needs {', '.join(missing)}: {INSTALL}", pytrace=False)
    node = shutil.which("node")
    assert node is not None
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    # Its own process group, so a hung run takes its Chromium down with it.
    proc = subprocess.Popen(
        [node, str(BROWSER_DIR / "page_flow.mjs"), api_url, str(SCREENSHOT), question],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=FLOW_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"page_flow.mjs did not finish in {FLOW_TIMEOUT_S}s:\n{stderr[-3000:]}", pytrace=False)
    (ARTIFACTS / "page-flow.log").write_text(f"exit {proc.returncode}\n{stdout}\n{stderr}")
    assert proc.returncode == 0, f"page_flow.mjs exited {proc.returncode}:\n{stderr[-3000:]}"
    report: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    assert "exception" not in report, report["exception"]
    return report


def test_the_page_streams_tokens_then_shows_the_result_in_a_real_browser(stack: Stack, client: httpx.Client) -> None:
    question = unique("Why is the sky blue? [lm:tps=30]")
    expected = expected_result(question)

    report = run_page_flow(stack.api_url, question)

    assert report["page_status"] == 200
    assert report["title"] == "DSPy jobs"
    assert not report["timed_out"], report["stream"]

    # Tokens showed up progressively, well before the result did.
    stream = report["stream"]
    assert "running" in stream["statuses_seen"], stream
    assert stream["distinct_reasoning_texts"] >= 3, stream
    assert stream["distinct_answer_texts"] >= 3, stream
    assert stream["reasoning_texts_grow"] and stream["answer_texts_grow"], stream
    assert all(expected["answer"].startswith(text) for text in stream["answer_texts"]), stream
    assert all(expected["reasoning"].startswith(text) for text in stream["reasoning_texts"]), stream
    assert stream["answer_texts"][0] != expected["answer"], "the answer must not appear whole at once"
    assert stream["first_token_ms"] < stream["final_ms"]

    # The result, as the page shows it, is what the scripted LM answered.
    final = report["final"]
    assert final["status"] == "succeeded"
    assert final["answer"] == expected["answer"]
    assert final["key_concepts"] == expected["key_concepts"]
    assert final["question_type"] == expected["question_type"]
    assert final["panels"]["reasoning"] == expected["reasoning"]
    assert final["panels"]["answer"] == expected["answer"]
    assert final["attempts"] == "1"
    assert final["temperature"] == "0.3"
    usage = re.fullmatch(r"(\d+) prompt \+ (\d+) completion", final["usage"])
    assert usage and int(usage[1]) > 0 and int(usage[2]) > 0, final["usage"]
    assert re.fullmatch(r"\d+\.\d\d s \(ran \d+\.\d\d s\)", final["elapsed"]), final["elapsed"]
    assert not report["problem_after_success"]["shown"]
    # The page sent the temperature it was given.
    job = client.get(f"/jobs/{final['job_id']}").json()
    assert job["input"] == {"question": question}
    assert job["temperature"] == 0.3
    assert job["result"] == expected

    # A failed job shows its error instead of a result.
    failed = report["failed"]
    assert not failed["timed_out"]
    assert failed["shown"] and not failed["final_shown"], failed
    assert failed["status"] == "failed"
    assert "AdapterParseError" in failed["title"], failed

    # A refused question shows the API's message.
    rejected = report["rejected"]
    assert rejected["shown"] and not rejected["job_shown"], rejected
    assert "HTTP 422" in rejected["title"], rejected
    assert "question is 4001 characters; the limit is 4000" in rejected["message"], rejected
    assert report["submit_enabled_after"]

    # Nothing broke on the page: no script errors, no failed requests. The
    # browser itself logs the refused request (422) as a console error.
    assert report["page_errors"] == []
    assert report["failed_requests"] == []
    assert [e for e in report["console_errors"] if "status of 422" not in e] == []
    assert SCREENSHOT.stat().st_size > 10_000
