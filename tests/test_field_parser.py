"""The field parsers split a completion (ChatAdapter's sections, JSONAdapter's object), however it is cut
into chunks, into what DSPy parses."""

import json

import dspy
import pytest

from worker.field_parser import FieldParser, JsonFieldParser

FIELDS = ["reasoning", "answer"]
COMPLETION = "[[ ## reasoning ## ]]\n  Paris is the capital.  \n\n[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]\n"


def collect(parser_class: type[FieldParser | JsonFieldParser], chunks: list[str], fields: list[str]) -> dict[str, str]:
    """Each field's text as a client joins it, the completion fed in `chunks`."""
    got: dict[str, str] = {}
    parser = parser_class(fields, lambda name, text: got.__setitem__(name, got.get(name, "") + text), set())
    for chunk in chunks:
        parser.feed(chunk)
    parser.finish()
    return got


def stream(chunks: list[str], fields: list[str] = FIELDS) -> dict[str, str]:
    return collect(FieldParser, chunks, fields)


def every_cut(text: str) -> list[list[str]]:
    return [[text[:i], text[i:]] for i in range(len(text) + 1)]


def test_each_field_gets_the_text_dspy_parses_from_the_same_completion() -> None:
    signature = dspy.Signature("question -> reasoning, answer")
    parsed = dspy.ChatAdapter().parse(signature, COMPLETION)

    assert stream([COMPLETION]) == {"reasoning": parsed["reasoning"], "answer": parsed["answer"]}


@pytest.mark.parametrize("chunks", every_cut(COMPLETION), ids=lambda c: f"cut at {len(c[0])}")
def test_a_completion_cut_anywhere_streams_the_same_fields(chunks: list[str]) -> None:
    assert stream(chunks) == {"reasoning": "Paris is the capital.", "answer": "Paris"}


def test_a_completion_one_character_at_a_time_streams_the_same_fields() -> None:
    assert stream(list(COMPLETION)) == {"reasoning": "Paris is the capital.", "answer": "Paris"}


def test_text_under_a_header_that_is_no_output_field_goes_nowhere() -> None:
    assert stream(["[[ ## notes ## ]]\nignored\n[[ ## answer ## ]]\n42"]) == {"answer": "42"}


def test_a_bracket_that_starts_no_header_is_text() -> None:
    assert stream(["[[ ## answer ## ]]\nlist[0] is [a] and [[b]]"]) == {"answer": "list[0] is [a] and [[b]]"}


def test_inner_whitespace_is_kept_and_trailing_whitespace_is_not_sent() -> None:
    sent: list[str] = []
    parser = FieldParser(["answer"], lambda _, text: sent.append(text), set())
    for chunk in ["[[ ## answer ## ]]\n", "one ", " ", "two  ", "\n\n"]:
        parser.feed(chunk)
    parser.finish()

    assert "".join(sent) == "one  two"
    assert sent[-1] == "  two", "held whitespace goes out with the text that follows it"


def test_the_fields_that_streamed_are_reported() -> None:
    streamed: set[str] = set()
    parser = FieldParser(FIELDS, lambda *_: None, streamed)
    parser.feed("[[ ## reasoning ## ]]\nbecause\n[[ ## answer ## ]]\n   \n")
    parser.finish()

    assert streamed == {"reasoning"}, "a field with only whitespace did not stream"


# --- JSONAdapter's completions --------------------------------------------------------------

JSON_FIELDS = ["reasoning", "answer", "key_concepts", "question_type"]
JSON_COMPLETION = (
    '{ "reasoning": "He said \\"no\\", then left.\\nCaf\\u00e9 \\ud83d\\ude00 \\\\ done",'
    ' "answer": "Paris",\n  "key_concepts": ["a, b", "[c]", {"d": "}"}],'
    ' "notes": "not a field", "question_type": "factual" }\n'
)


def json_stream(chunks: list[str], fields: list[str] = JSON_FIELDS) -> dict[str, str]:
    return collect(JsonFieldParser, chunks, fields)


def expected_json_fields() -> dict[str, str]:
    parsed = json.loads(JSON_COMPLETION)
    return {
        "reasoning": parsed["reasoning"],
        "answer": "Paris",
        "key_concepts": '["a, b", "[c]", {"d": "}"}]',
        "question_type": "factual",
    }


def test_string_fields_stream_decoded_and_typed_fields_stream_their_json() -> None:
    assert json_stream([JSON_COMPLETION]) == expected_json_fields()


@pytest.mark.parametrize("chunks", every_cut(JSON_COMPLETION), ids=lambda c: f"cut at {len(c[0])}")
def test_a_json_completion_cut_anywhere_streams_the_same_fields(chunks: list[str]) -> None:
    assert json_stream(chunks) == expected_json_fields()


def test_a_json_completion_one_character_at_a_time_streams_the_same_fields() -> None:
    assert json_stream(list(JSON_COMPLETION)) == expected_json_fields()


def test_a_surrogate_pair_is_never_sent_in_halves() -> None:
    sent: list[str] = []
    parser = JsonFieldParser(["answer"], lambda _, text: sent.append(text), set())
    for chunk in ['{"answer": "x \\ud83d', "\\ude00", ' y"}']:
        parser.feed(chunk)
    parser.finish()

    assert "".join(sent) == "x \U0001f600 y"
    assert all(not ("\ud800" <= ch <= "\udfff") for text in sent for ch in text)


def test_nothing_after_the_object_streams() -> None:
    assert json_stream(['{"answer": "42"}', ' {"answer": "again"}']) == {"answer": "42"}


def test_a_value_cut_off_by_the_token_limit_streams_what_was_written() -> None:
    assert json_stream(['{"reasoning": "It is', " because"]) == {"reasoning": "It is because"}
