"""Reading an OpenAI batch input file (api/batch_file.py): every line checked, errors naming their line."""

import json
from typing import Any

import pytest

from api.batch_file import read_requests
from api.chat_format import ChatProgram
from api.program_catalog import Catalog
from core.settings import get_settings


@pytest.fixture(scope="module")
def programs() -> dict[str, ChatProgram | str]:
    catalog = Catalog(get_settings())
    found: dict[str, ChatProgram | str] = {}
    for name in ("qa", "triage"):
        models = catalog.programs[name].models
        assert models is not None
        found[name] = ChatProgram.of(name, models.input, models.output.model_json_schema())
    found["broken"] = "program 'broken' cannot be served: its artifact is missing"
    return found


def line(custom_id: str, question: str = "What is 2+2?", **body: Any) -> bytes:
    request = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "qa", "messages": [{"role": "user", "content": question}], **body},
    }
    return json.dumps(request).encode()


def read(programs: dict[str, ChatProgram | str], *lines: bytes, max_requests: int = 100) -> Any:
    return read_requests(b"\n".join(lines), lambda name: programs.get(name, f"no program named {name!r}"), max_requests)


def test_a_valid_file_gives_one_programs_items_with_their_custom_ids(programs: dict[str, ChatProgram | str]) -> None:
    found = read(programs, line("a", "Who wrote Hamlet?", temperature=0.2), b"", line("b", temperature=0.2))

    assert not found.errors
    assert found.program == "qa" and found.temperature == 0.2 and not found.as_json
    assert found.items == [
        {"question": "Who wrote Hamlet?", "custom_id": "a"},
        {"question": "What is 2+2?", "custom_id": "b"},
    ]


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (line(""), "invalid_custom_id"),
        (line("a"), "duplicate_custom_id"),
        (json.dumps({**json.loads(line("x")), "method": "GET"}).encode(), "invalid_method"),
        (json.dumps({**json.loads(line("x")), "url": "/v1/embeddings"}).encode(), "invalid_url"),
        (line("x", model="nope"), "model_not_found"),
        (line("x", model="broken"), "model_not_found"),
        (line("x", model="triage"), "mixed_model"),
        (line("x", stream=True), "invalid_body"),
        (line("x", question="   "), "invalid_body"),
        (json.dumps({**json.loads(line("x")), "body": {"model": "qa"}}).encode(), "invalid_body"),
    ],
)
def test_each_kind_of_bad_line_is_named_with_its_line(
    programs: dict[str, ChatProgram | str], bad: bytes, code: str
) -> None:
    found = read(programs, line("a"), bad)

    assert [(e.line, e.code) for e in found.errors] == [(2, code)]
    assert found.errors[0].message


def test_requests_must_agree_on_temperature_and_response_format(programs: dict[str, ChatProgram | str]) -> None:
    temperatures = read(programs, line("a", temperature=0.1), line("b", temperature=0.9))
    formats = read(programs, line("a"), line("b", response_format={"type": "json_object"}))

    assert [e.code for e in temperatures.errors] == ["mixed_temperature"]
    assert [e.code for e in formats.errors] == ["mixed_response_format"]


def test_an_empty_file_or_one_over_the_limit_is_refused_whole(programs: dict[str, ChatProgram | str]) -> None:
    assert [e.code for e in read(programs, b"", b"  ").errors] == ["empty_file"]
    assert [e.code for e in read(programs, line("a"), line("b"), max_requests=1).errors] == ["too_many_requests"]


def test_errors_stop_being_listed_past_a_hundred(programs: dict[str, ChatProgram | str]) -> None:
    found = read(programs, *([b"{bad"] * 150), max_requests=1000)

    assert len(found.errors) == 101 and found.errors[-1].code == "too_many_errors"
