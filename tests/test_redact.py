"""URLs lose their user information in every text that leaves a process (core/redact.py)."""

import pytest

from core.redact import without_credentials


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "could not reach https://alice:s3cr3t@mlflow.internal:5000/api (timeout)",
            "could not reach https://[redacted]@mlflow.internal:5000/api (timeout)",
        ),
        ("redis://:p%40ss@redis:6379/0 refused", "redis://[redacted]@redis:6379/0 refused"),
        ("token in https://ghp_abc@host/x", "token in https://[redacted]@host/x"),
        ("no URL here: a@b.c", "no URL here: a@b.c"),
        ("http://host:8080/v1/models answered 500", "http://host:8080/v1/models answered 500"),
    ],
)
def test_user_information_is_masked_and_nothing_else(text: str, expected: str) -> None:
    assert without_credentials(text) == expected
