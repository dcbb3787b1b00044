"""The log filter masks API keys however a URL spells their parameter (core/logging_setup.py)."""

import pytest

from core.logging_setup import REDACTED, RedactFilter


@pytest.mark.parametrize(
    "line",
    [
        'GET /jobs/x/events?api_key=dj_secret HTTP/1.1" 200',
        'GET /jobs/x/events?api%5Fkey=dj_secret HTTP/1.1" 401',
        'GET /jobs/x/events?API%5fKEY=dj_secret&last_event_id=3 HTTP/1.1" 401',
        'GET /jobs/x/events?%61%70%69_key=dj_secret HTTP/1.1" 401',
        "Authorization: Bearer dj_secret",
        "x-api-key: dj_secret",
    ],
)
def test_every_spelling_of_the_key_is_masked(line: str) -> None:
    masked = RedactFilter(secrets=[], log_payloads=True).redact(line)

    assert "dj_secret" not in masked and REDACTED in masked


def test_other_query_parameters_are_left_as_they_are() -> None:
    line = "GET /jobs/x/events?last_event_id=3&wait=5"

    assert RedactFilter(secrets=[], log_payloads=True).redact(line) == line
