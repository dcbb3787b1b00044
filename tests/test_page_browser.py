"""The page at `/`, served by the API and used in a real headless Chromium.

The browser is Debian's `/usr/bin/chromium`, driven by `playwright-core` from
npm (the flows in `tests/browser/*.mjs`); `bash tests/browser/install.sh`
installs both. A machine without them fails these tests: they never skip.

Each flow prints what the page showed as one JSON report; the tests compare
it with what the API says (`GET /jobs/{id}`, `GET /batches/{id}/results`).
Screenshots and each flow's log go to `test-artifacts/page-*`.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.auth import digest
from harness.processes import ARTIFACTS, ROOT
from tests.conftest import Stack, private_stack
from tests.test_batches import wait_batch
from tests.test_jobs import expected_result, unique
from tests.test_programs import build_artifact, registry
from tests.test_programs import expected_result as extractor_result

pytestmark = pytest.mark.e2e

BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ARTIFACTS / "page.png"
FLOW_TIMEOUT_S = 240
INSTALL = "run `bash tests/browser/install.sh` (Debian's chromium via apt-get, playwright-core via npm ci)"
EN_DASH = "\u2013"  # between the numbers of a range of results on the page ("items 1-50 of 200")


def test_index_page_is_served(client: httpx.Client) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    for part in (
        '<select id="program"',
        '<form id="job-form"',
        '<button id="submit" type="submit"',
        '<form id="batch-form"',
        '<input id="batch-file"',
        'id="batch-progress"',
        '<table id="results-table"',
    ):
        assert part in html, part
    # Everything comes from this server: the machine may have no internet.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    for asset, media_type in (("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert served.headers["content-type"].startswith(media_type), asset
        assert f'"{asset}"' in html
    # Model output and uploaded files reach the page only as text.
    script = client.get("/static/app.js").text
    assert not re.search(r"\.(inner|outer)HTML\s*\+?=|insertAdjacentHTML|document\.write|DOMParser", script)
    assert "/" not in client.get("/openapi.json").json()["paths"]


# --- Running the flows ---------------------------------------------------------


def missing_browser_tools() -> list[str]:
    missing = []
    if shutil.which("node") is None:
        missing.append("node (Node.js 20+)")
    if not CHROMIUM.exists():
        missing.append(str(CHROMIUM))
    if not (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").exists():
        missing.append("playwright-core in tests/browser/node_modules")
    return missing


def run_flow(script: str, *args: str, log_name: str) -> dict[str, Any]:
    """Runs `tests/browser/<script>` and returns its report; its output is kept in `test-artifacts/<log_name>`."""
    missing = missing_browser_tools()
    if missing:
        pytest.fail(f"the browser test needs {', '.join(missing)}: {INSTALL}", pytrace=False)
    node = shutil.which("node")
    assert node is not None
    ARTIFACTS.mkdir(exist_ok=True)
    # Its own process group, so a hung run takes its Chromium down with it.
    proc = subprocess.Popen(
        [node, str(BROWSER_DIR / script), *args],
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
        pytest.fail(f"{script} did not finish in {FLOW_TIMEOUT_S}s:\n{stderr[-3000:]}", pytrace=False)
    (ARTIFACTS / log_name).write_text(f"exit {proc.returncode}\n{stdout}\n{stderr}")
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{stderr[-3000:]}"
    report: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    assert "exception" not in report, report["exception"]
    return report


def run_plan(script: str, api_url: str, name: str, plan: dict[str, Any]) -> dict[str, Any]:
    """A flow driven by a plan (page_program_flow.mjs, page_batch_flow.mjs); screenshots `page-<name>*.png`."""
    screenshot = ARTIFACTS / f"page-{name}.png"
    for old in ARTIFACTS.glob(f"page-{name}*.png"):
        old.unlink()
    ARTIFACTS.mkdir(exist_ok=True)
    plan_path = ARTIFACTS / f"page-{name}-plan.json"
    plan_path.write_text(json.dumps(plan, indent=1))
    return run_flow(script, api_url, str(screenshot), str(plan_path), log_name=f"page-{name}.log")


def run_page_flow(api_url: str, question: str) -> dict[str, Any]:
    SCREENSHOT.unlink(missing_ok=True)
    return run_flow("page_flow.mjs", api_url, str(SCREENSHOT), question, log_name="page-flow.log")


def assert_page_was_clean(report: dict[str, Any], refused: tuple[int, ...] = ()) -> None:
    """No script errors, no failed requests. The browser itself logs refused requests as console errors."""
    assert report["page_errors"] == []
    assert report["failed_requests"] == []
    expected = tuple(f"status of {status}" for status in refused)
    assert [e for e in report["console_errors"] if not any(x in e for x in expected)] == []


# --- What the page shows for a typed value (app.js renderValue) ------------------


def assert_shows(view: dict[str, Any] | None, value: Any, enum: bool = False) -> None:
    """`view` (lib.mjs's reading of a rendered value) shows `value` as its type."""
    assert view is not None, value
    if value is None:
        assert view["type"] == "null", view
    elif isinstance(value, bool):
        assert (view["type"], view["text"]) == ("boolean", json.dumps(value)), view
    elif isinstance(value, int | float):
        assert view["type"] == "number" and float(view["text"]) == value, view
    elif isinstance(value, str):
        assert (view["type"], view["text"]) == ("enum" if enum else "text", value), view
    elif isinstance(value, list):
        assert view["type"] == "list" and len(view["items"]) == len(value), view
        assert view["items"] == [str(item) for item in value], view
    elif isinstance(value, dict):
        assert view["type"] == "object", view
        assert view["rows"] == {k: str(v) for k, v in value.items()}, view
    else:
        raise AssertionError(f"no rendering known for {value!r}")


def api_results(client: httpx.Client, batch_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: int | None = 0
    while cursor is not None:
        page = client.get(f"/batches/{batch_id}/results", params={"cursor": cursor, "limit": 1000}).json()
        items += page["items"]
        cursor = page["next_cursor"]
    return items


def error_text(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    return f"{error['type']}: {error['message']}" if error.get("message") else str(error["type"])


def assert_table_matches(report: dict[str, Any], items: list[dict[str, Any]], enums: set[str]) -> None:
    """Every row the page's results table showed, over all its pages, is the API's item."""
    pages = report["table"]["pages"]
    rows = [row for page in pages for row in page["rows"]]
    assert [row["index"] for row in rows] == [item["index"] for item in items]
    outputs = [c for c in pages[0]["columns"] if c not in ("#", "custom_id", "status", "error")]
    for row, item in zip(rows, items, strict=True):
        cells = row["cells"]
        assert row["status"] == item["status"] == cells["status"]["text"], (row, item)
        assert cells["index"]["text"] == str(item["index"])
        assert cells["custom_id"]["text"] == (item["custom_id"] or "")
        assert cells["error"]["text"] == error_text(item["error"]), (row, item)
        for name in outputs:
            if item["result"] is None:
                assert cells[name]["text"] == "", (name, row)
            else:
                assert_shows(cells[name]["value"], item["result"][name], enum=name in enums)


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


# --- One job ------------------------------------------------------------------


def test_the_page_streams_tokens_then_shows_the_result_in_a_real_browser(stack: Stack, client: httpx.Client) -> None:
    question = unique("Why is the sky blue? [lm:tps=30]")
    expected = expected_result(question)

    report = run_page_flow(stack.api_url, question)

    assert report["page_status"] == 200
    assert report["title"] == "DSPy jobs"
    assert not report["timed_out"], report["stream"]
    # The default program is picked, its form built from its input schema.
    loaded = report["loaded"]
    assert loaded["program"] == "qa"
    assert {p["name"] for p in loaded["programs"]} >= {"qa", "triage"}
    assert [(f["name"], f["control"], f["required"]) for f in loaded["form"]] == [("question", "textarea", True)]
    assert loaded["form"][0]["description"] == "The question to answer."

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

    # The result, as the page shows it, is what the scripted LM answered, each field as its type.
    done = report["done"]
    panels = done["panels"]
    assert list(panels) == ["reasoning", "answer", "key_concepts", "question_type"]
    assert_shows(panels["reasoning"]["value"], expected["reasoning"])
    assert_shows(panels["answer"]["value"], expected["answer"])
    assert_shows(panels["key_concepts"]["value"], expected["key_concepts"])
    assert_shows(panels["question_type"]["value"], expected["question_type"], enum=True)
    assert panels["key_concepts"]["type"] == "list of text"
    assert panels["question_type"]["type"] == "one of: factual, opinion, analytical"
    final = done["final"]
    assert final["status"] == "succeeded"
    assert final["program"] == "qa v1"
    assert final["attempts"] == "1"
    assert final["temperature"] == "0.3"
    usage = re.fullmatch(r"(\d+) prompt \+ (\d+) completion", final["usage"])
    assert usage and int(usage[1]) > 0 and int(usage[2]) > 0, final["usage"]
    assert re.fullmatch(r"\d+\.\d\d s \(ran \d+\.\d\d s\)", final["elapsed"]), final["elapsed"]
    assert done["problem"] is None
    # The page sent the temperature it was given.
    job = client.get(f"/jobs/{done['job_id']}").json()
    assert job["input"] == {"question": question}
    assert job["temperature"] == 0.3
    assert job["result"] == expected

    # A failed job shows its error instead of a result.
    failed = report["failed"]
    assert not failed["timed_out"]
    assert failed["problem"] and not failed["final_shown"], failed
    assert failed["status"] == "failed"
    assert "AdapterParseError" in failed["problem"]["title"], failed

    # A refused question shows the API's message, above and next to the field.
    rejected = report["rejected"]
    assert rejected["problem"] and not rejected["job_shown"], rejected
    assert "HTTP 422" in rejected["problem"]["title"], rejected
    assert "question is 4001 characters; the limit is 4000" in rejected["problem"]["message"], rejected
    assert "question is 4001 characters; the limit is 4000" in rejected["field_errors"]["question"], rejected
    assert report["submit_enabled_after"]

    assert_page_was_clean(report, refused=(422,))
    assert SCREENSHOT.stat().st_size > 10_000


def test_a_triage_job_from_its_generated_form_shows_its_typed_result(stack: Stack, client: httpx.Client) -> None:
    # Markup in the input comes back in the output: the page must show it as text.
    ticket = unique("I was charged <b>twice</b> <img src=x onerror=alert(1)> this month [lm:tps=40]")
    plan = {"program": "triage", "steps": [{"name": "typed", "fields": {"ticket": ticket}, "temperature": "0.2"}]}

    report = run_plan("page_program_flow.mjs", stack.api_url, "triage", plan)

    form = report["loaded"]["form"]
    assert [(f["name"], f["kind"], f["control"], f["required"]) for f in form] == [("ticket", "text", "textarea", True)]
    assert form[0]["description"] == "The ticket as the customer wrote it."
    seen = report["steps"]["typed"]
    assert seen["state"] == "done" and seen["problem"] is None, seen
    job = client.get(f"/jobs/{seen['job_id']}").json()
    assert job["program"] == "triage"
    assert job["input"] == {"ticket": ticket}
    assert job["temperature"] == 0.2
    assert job["result"] == {"category": "billing", "urgency": 3, "summary": f"summary for {ticket}"}
    # Typed outputs shown as their types: a Literal as a label, an int as a number.
    panels = seen["panels"]
    assert list(panels) == ["category", "urgency", "summary"]
    assert panels["category"]["type"] == "one of: billing, bug, account, feature_request, other"
    assert panels["urgency"]["type"] == "integer"
    assert_shows(panels["category"]["value"], "billing", enum=True)
    assert_shows(panels["urgency"]["value"], 3)
    assert_shows(panels["summary"]["value"], job["result"]["summary"])
    # Each field streamed as text first (a typed field as its JSON).
    assert panels["summary"]["stream"] == job["result"]["summary"]
    assert panels["urgency"]["stream"].strip() == "3"
    assert seen["final"]["status"] == "succeeded" and seen["final"]["program"] == "triage v1"
    assert_page_was_clean(report)


# --- Batches ------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_200_item_jsonl_batch_reaches_100_percent_and_its_table_and_download_match_the_api(
    stack: Stack, client: httpx.Client, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    garbage = {17, 64, 101, 150, 199}  # the scripted LM answers these with text DSPy cannot parse
    rows = [
        {
            "custom_id": f"t-{i:03}",
            "ticket": f"Ticket {i} ({tag}) [lm:delay_s=0.2{',garbage' if i in garbage else ''}]",
        }
        for i in range(200)
    ]
    rows[3] = {"ticket": rows[3]["ticket"]}  # custom_id is optional
    download = tmp_path / "results.ndjson"
    plan = {
        "program": "triage",
        "file": str(write_jsonl(tmp_path / "tickets.jsonl", rows)),
        "download": str(download),
        "retry": True,
    }

    report = run_plan("page_batch_flow.mjs", stack.api_url, "batch", plan)

    assert report["parsed"]["errors"] == []
    assert report["parsed"]["parsed"].startswith("200 items read from tickets.jsonl"), report["parsed"]
    batch_id = report["submitted"]["batch_id"]
    batch = wait_batch(client, batch_id)
    assert batch["program"] == "triage"
    assert batch["status"] == "completed"
    assert batch["counts"]["succeeded"] == 195 and batch["counts"]["failed"] == 5, batch["counts"]

    # The progress bar only moved forward, and reached 100 % with the final counts.
    progress = report["progress"]
    assert not progress["timed_out"]
    percents = [seen["percent"] for seen in progress["seen"]]
    assert percents == sorted(percents), percents
    final = report["final_progress"]
    assert (final["percent"], final["aria_valuenow"], final["percent_text"]) == (100, 100, "100 %"), final
    assert (final["finished"], final["total"]) == (200, 200)
    assert final["status"] == "completed" and not final["cancel_shown"]
    assert "195 succeeded" in final["counts_text"] and "5 failed" in final["counts_text"], final

    # The table, over its pages, and the download are what the API answers.
    items = api_results(client, batch_id)
    assert len(items) == 200
    assert report["table"]["pages"][0]["columns"] == [
        "#",
        "custom_id",
        "status",
        "category",
        "urgency",
        "summary",
        "error",
    ]
    assert len(report["table"]["pages"]) == 4  # 50 a page
    assert report["table"]["pages"][0]["range"] == f"items 1{EN_DASH}50 of 200"
    assert report["table"]["back_to"] == f"items 101{EN_DASH}150 of 200"
    assert_table_matches(report, items, enums={"category"})
    failed = [item for item in items if item["status"] == "failed"]
    assert [item["index"] for item in failed] == sorted(garbage)
    assert all(item["error"]["type"] == "AdapterParseError" for item in failed), failed[0]
    assert items[3]["custom_id"] is None and items[4]["custom_id"] == "t-004"
    assert report["download_name"] == f"batch-{batch_id}.ndjson"
    assert read_ndjson(download) == items
    assert report["after"]["problem"] is None
    # Failed only: exactly the failed items; Retry failed: a batch of those, followed to its end.
    shown = report["failed_only"]
    assert [row["index"] for row in shown["rows"]] == sorted(garbage) and shown["range"] == "5 failed of 200"
    assert {row["cells"]["error"]["text"].split(":")[0] for row in shown["rows"]} == {"AdapterParseError"}
    retry = report["retry"]
    assert retry["batch_id"] != batch_id and not retry["progress"]["timed_out"]
    again = wait_batch(client, retry["batch_id"])
    assert again["retry_of"] == batch_id and again["counts"]["total"] == 5
    assert [i["custom_id"] for i in api_results(client, again["id"])] == [f"t-{i:03}" for i in sorted(garbage)]
    assert retry["final"]["note"] == f"runs the failures of batch {batch_id} again", retry["final"]
    assert_page_was_clean(report)


@pytest.fixture(scope="module")
def idle_stack(lm_api_base: str) -> Iterator[Stack]:
    """An API and no worker: a batch's items stay queued until it is cancelled."""
    stack = private_stack(lm_api_base, "redis-page-idle")
    stack.start_api()
    yield stack
    stack.stop()


def test_a_batch_cancelled_from_the_page_ends_cancelled_with_honest_counts(idle_stack: Stack, tmp_path: Path) -> None:
    rows = [{"custom_id": f"c-{i}", "ticket": f"Never run {i}"} for i in range(40)]
    download = tmp_path / "cancelled.ndjson"
    plan = {
        "program": "triage",
        "file": str(write_jsonl(tmp_path / "never.jsonl", rows)),
        "download": str(download),
        "cancel": True,
    }

    report = run_plan("page_batch_flow.mjs", idle_stack.api_url, "batch-cancel", plan)

    with idle_stack.client() as client:
        batch = wait_batch(client, report["submitted"]["batch_id"])
        items = api_results(client, batch["id"])
    assert batch["status"] == "cancelled"
    assert batch["counts"]["cancelled"] == 40, batch["counts"]
    final = report["final_progress"]
    assert final["status"] == "cancelled" and not final["cancel_shown"], final
    assert (final["percent"], final["finished"]) == (100, 40), final
    assert final["counts_text"] == "40 of 40 finished · 40 cancelled", final
    assert_table_matches(report, items, enums={"category"})
    assert {row["status"] for page in report["table"]["pages"] for row in page["rows"]} == {"cancelled"}
    assert read_ndjson(download) == items
    assert_page_was_clean(report)


# --- A program with typed inputs and outputs of every kind ---------------------


@pytest.fixture
def typed_client(typed_stack: Stack) -> Iterator[httpx.Client]:
    with typed_stack.client() as client:
        yield client


@pytest.fixture(scope="module")
def typed_stack(lm_api_base: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The test program `extractor` (tests/programs/extractor.py: str, int and list inputs; Literal, int,
    float, list, nested model and str outputs) and one registered program that cannot be served."""
    artifacts = tmp_path_factory.mktemp("page-artifacts")
    stack = private_stack(lm_api_base, "redis-page-typed")
    stack.extra_env = {"PROGRAMS": json.dumps(registry(artifacts))}
    build_artifact(stack)
    stack.start_services()
    yield stack
    stack.stop()


def test_a_typed_form_shows_the_apis_422_next_to_each_field_then_a_typed_result(
    typed_stack: Stack, typed_client: httpx.Client
) -> None:
    note = unique("The red door at 1 Main Street [lm:tps=80]")
    plan = {
        "program": "extractor",
        "steps": [
            # A blank text and a missing integer: the API names both, each shown next to its field.
            {"name": "rejected", "fields": {"note": "   ", "priority": "", "labels": "billing\nurgent"}},
            {"name": "typed", "fields": {"note": note, "priority": "2", "labels": "billing\n urgent \n\n"}},
        ],
    }

    report = run_plan("page_program_flow.mjs", typed_stack.api_url, "extractor", plan)

    programs = {p["name"]: p for p in report["loaded"]["programs"]}
    assert programs["never-built"]["disabled"] and "unavailable" in programs["never-built"]["text"]
    form = {f["name"]: f for f in report["loaded"]["form"]}
    assert (form["note"]["control"], form["note"]["type"]) == ("textarea", "text")
    assert (form["priority"]["control"], form["priority"]["type"]) == ("input:number", "integer")
    assert form["priority"]["description"] == "How much the caller cares, 1 to 5."
    assert (form["labels"]["control"], form["labels"]["type"]) == ("textarea", "list of text")
    assert all(f["required"] for f in form.values())

    rejected = report["steps"]["rejected"]
    assert rejected["state"] == "idle" and "HTTP 422" in rejected["problem"]["title"], rejected
    assert set(rejected["field_errors"]) == {"note", "priority"}, rejected["field_errors"]
    assert "note must not be empty or blank" in rejected["field_errors"]["note"]
    assert "Field required" in rejected["field_errors"]["priority"]

    typed = report["steps"]["typed"]
    assert typed["state"] == "done" and typed["field_errors"] == {}, typed
    job = typed_client.get(f"/jobs/{typed['job_id']}").json()
    assert job["input"] == {"note": note, "priority": 2, "labels": ["billing", "urgent"]}
    expected = extractor_result(note)
    assert job["result"] == expected
    panels = typed["panels"]
    assert_shows(panels["colour"]["value"], "red", enum=True)
    assert_shows(panels["count"]["value"], 3)
    assert_shows(panels["score"]["value"], 0.5)
    assert_shows(panels["keywords"]["value"], ["scripted"])
    assert_shows(panels["address"]["value"], {"city": "scripted", "zip": 1})
    assert_shows(panels["summary"]["value"], expected["summary"])
    assert (panels["address"]["kind"], panels["score"]["type"]) == ("json", "number")
    # Titled after the field, not after the model it refers to (ExtractorAddress).
    assert [p["title"] for p in panels.values()] == ["Colour", "Count", "Score", "Keywords", "Address", "Summary"]
    assert_page_was_clean(report, refused=(422,))


def test_a_csv_batch_is_converted_to_the_input_types_and_bad_files_are_named_by_line(
    typed_stack: Stack, typed_client: httpx.Client, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    csv = tmp_path / "notes.csv"
    csv.write_text(
        "custom_id,note,priority,labels\r\n"
        f'n-0,"A note, with a comma ({tag})",2,billing; urgent\r\n'
        f'n-1,"A note on two\nlines ({tag})",5,"[""a"",""b""]"\r\n'
        f"n-2,Plain ({tag}),1,x\r\n"
    )
    client = typed_client
    plan = {"program": "extractor", "file": str(csv), "download": str(tmp_path / "notes.ndjson")}

    report = run_plan("page_batch_flow.mjs", typed_stack.api_url, "csv", plan)

    assert report["parsed"]["errors"] == [] and report["parsed"]["parsed"].startswith("3 items read from notes.csv")
    batch = wait_batch(client, report["submitted"]["batch_id"])
    assert batch["status"] == "completed", batch
    inputs = [client.get(f"/jobs/{batch['id']}-{i}").json()["input"] for i in range(3)]
    assert inputs == [
        {"note": f"A note, with a comma ({tag})", "priority": 2, "labels": ["billing", "urgent"]},
        {"note": f"A note on two\nlines ({tag})", "priority": 5, "labels": ["a", "b"]},
        {"note": f"Plain ({tag})", "priority": 1, "labels": ["x"]},
    ]
    items = api_results(client, batch["id"])
    assert [item["custom_id"] for item in items] == ["n-0", "n-1", "n-2"]
    assert_table_matches(report, items, enums={"colour"})
    assert read_ndjson(Path(plan["download"])) == items

    # A cell that is not of its column's type: named by line, nothing sent.
    bad = tmp_path / "bad.csv"
    bad.write_text('custom_id,note,priority,labels,colour\nb-0,Fine,1,x,red\nb-1,"Not fine",high,x,red\n')
    parsed = run_plan(
        "page_batch_flow.mjs", typed_stack.api_url, "csv-bad", {**plan, "file": str(bad), "parse_only": True}
    )["parsed"]
    assert parsed["parsed"] is None and not parsed["submit_enabled"], parsed
    assert parsed["errors"] == [
        "line 3: priority: “high” is not a whole number",
        "line 2: “colour” is not an input of extractor (its inputs: note, priority, labels)",
    ], parsed

    # An item the API refuses: its 422 is named by the file's line.
    refused = write_jsonl(
        tmp_path / "refused.jsonl",
        [{"note": "Fine", "priority": 1, "labels": []}, {"note": "  ", "priority": 1, "labels": []}],
    )
    report = run_plan("page_batch_flow.mjs", typed_stack.api_url, "batch-refused", {**plan, "file": str(refused)})
    submitted = report["submitted"]
    assert "HTTP 422" in submitted["problem"]["title"], submitted
    assert submitted["errors"] == ["line 2: note: Value error, note must not be empty or blank"], submitted
    assert_page_was_clean(report, refused=(422,))


# --- With API keys --------------------------------------------------------------


KEY = f"dj_page_{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def keyed_stack(lm_api_base: str) -> Iterator[Stack]:
    stack = private_stack(lm_api_base, "redis-page-keyed")
    stack.extra_env = {"API_KEYS": f"page:{digest(KEY)}"}
    stack.start_services()
    yield stack
    stack.stop()


def test_the_page_runs_a_job_and_a_batch_with_an_api_key(keyed_stack: Stack) -> None:
    question = unique("Asked from the page with a key [lm:tps=60]")
    screenshot = ARTIFACTS / "page-key.png"

    report = run_flow("page_key_flow.mjs", keyed_stack.api_url, KEY, question, str(screenshot), log_name="page-key.log")

    without = report["without_key"]
    assert without["state"] == "idle" and "needs an API key" in without["problem"] and "401" in without["problem"]
    assert report["with_key"]["state"] == "done" and report["with_key"]["status"] == "succeeded"
    assert report["with_key"]["answer"] == f"The answer to '{question}' is 42."
    batch = report["batch"]
    assert (batch["status"], batch["percent"], batch["download_lines"], batch["problem"]) == ("completed", 100, 3, None)
    assert batch["rows"] == [{"custom_id": f"k-{i}", "status": "succeeded"} for i in range(3)]
    # After the first refusal every request carried the key: as a header, or on event streams as ?api_key=.
    requests = report["requests"][1:]
    streams = [r for r in requests if r["path"].endswith("/events")]
    others = [r for r in requests if not r["path"].endswith("/events")]
    assert {r["path"].split("/")[1] for r in streams} == {"jobs", "batches"}
    assert all(r["query_key"] for r in streams), streams
    assert others and all(r["header_key"] and not r["query_key"] for r in others), others
    assert any(r["path"].endswith("/results.ndjson") for r in others)
    assert report["key_after_reload"], "the key is kept in localStorage"
    assert_page_was_clean(report, refused=(401,))


def test_thumbs_and_a_correction_on_a_finished_job_reach_its_feedback(stack: Stack, client: httpx.Client) -> None:
    question = unique("Which city is the capital of France?")
    screenshot = ARTIFACTS / "page-feedback.png"

    report = run_flow(
        "page_feedback_flow.mjs", stack.api_url, str(screenshot), question, "Paris", log_name="page-feedback.log"
    )

    assert_page_was_clean(report)
    assert report["state"] == "done" and report["box_shown"] is True
    assert report["send_enabled_before"] is False  # nothing said yet
    assert report["correction_fields"] == ["reasoning", "answer", "key_concepts", "question_type"]
    assert report["bad_pressed"] == "true"
    assert report["note"] == "Thank you: 1 feedback entry on this job."
    entries = client.get(f"/jobs/{report['job_id']}/feedback").json()["entries"]
    assert [(e["label"], e["correction"], e["comment"]) for e in entries] == [
        ("bad", {"answer": "Paris"}, "the answer is wrong")
    ]
