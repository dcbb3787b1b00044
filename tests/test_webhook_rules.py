"""Which webhook receivers are accepted, and when a failed attempt is tried again (no processes)."""

import asyncio
import base64
import json

import pytest

from core.settings import Settings
from core.webhook_url import TargetRefused
from core.webhooks import (
    BACKOFF_MAX_S,
    check_target,
    event_body,
    retry_delay_s,
    retryable,
    secret_problem,
)

SECRET = "whsec_" + base64.b64encode(bytes(32)).decode()


def resolving_to(*addresses: str):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


def check(url: str, *addresses: str, **settings: object) -> object:
    return asyncio.run(check_target(url, Settings(**settings), resolving_to(*addresses)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("192.168.1.10", "private"),
        ("172.16.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "non-public"),
        ("224.0.0.1", "multicast"),
    ],
)
def test_a_host_resolving_to_a_non_public_address_is_refused(address: str, kind: str) -> None:
    with pytest.raises(TargetRefused, match=f"resolves to {address}, a {kind} address"):
        check("https://hooks.example.com/in", address)


def test_one_private_address_among_public_ones_is_enough_to_refuse() -> None:
    with pytest.raises(TargetRefused, match=r"10\.1\.2\.3"):
        check("https://hooks.example.com/in", "93.184.216.34", "10.1.2.3")


def test_a_public_https_receiver_is_accepted_with_every_address_it_resolves_to() -> None:
    target = check("https://hooks.example.com:8443/in?x=1", "93.184.216.34", "2606:2800:220:1::1")
    assert target == type(target)("https", "hooks.example.com", 8443, ("93.184.216.34", "2606:2800:220:1::1"))  # type: ignore[call-arg]


def test_plain_http_is_refused_unless_the_host_is_opened() -> None:
    with pytest.raises(TargetRefused, match="must be https"):
        check("http://hooks.example.com/in", "93.184.216.34")
    check("http://127.0.0.1:9000/in", "127.0.0.1", webhook_allow_private=True)
    check("http://receiver.internal/in", "10.0.0.5", webhook_allowed_hosts=["receiver.internal"])
    with pytest.raises(TargetRefused, match="private"):
        check("https://other.internal/in", "10.0.0.6", webhook_allowed_hosts=["receiver.internal"])


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://hooks.example.com/in", "absolute http"),
        ("/relative/path", "absolute http"),
        ("https://user:pass@hooks.example.com/in", "credentials"),
        ("https://hooks.example.com:99999/in", "not a valid URL"),
        ("https://hooks.example.com/" + "a" * 2048, "limit is 2048"),
    ],
)
def test_malformed_receivers_are_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(TargetRefused, match=message):
        check(url, "93.184.216.34")


def test_a_host_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(TargetRefused, match="does not resolve"):
        check("https://nowhere.example/in")


def test_backoff_doubles_with_jitter_up_to_its_ceiling() -> None:
    assert [retry_delay_s(n, lambda: 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert [retry_delay_s(n, lambda: 0.0) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert retry_delay_s(40, lambda: 1.0) == BACKOFF_MAX_S


def test_every_answer_but_2xx_and_410_is_retried() -> None:
    assert [retryable(c) for c in (None, 200, 204, 301, 400, 410, 429, 500)] == [
        True,
        False,
        False,
        True,
        True,
        False,
        True,
        True,
    ]


def test_the_event_body_is_type_timestamp_and_the_record() -> None:
    body = json.loads(event_body("job.succeeded", 1_700_000_000.5, {"id": "j"}))
    assert body == {"type": "job.succeeded", "timestamp": "2023-11-14T22:13:20.500000Z", "data": {"id": "j"}}


def test_the_signing_secret_must_be_whsec_and_base64_of_enough_bytes() -> None:
    assert secret_problem(SECRET) is None
    assert "start with 'whsec_'" in str(secret_problem("not-a-secret"))
    assert "base64" in str(secret_problem("whsec_!!!"))
    assert "at least 24" in str(secret_problem("whsec_" + base64.b64encode(b"short").decode()))
    with pytest.raises(ValueError, match="WEBHOOK_SECRET is not a Standard Webhooks secret") as refused:
        Settings(webhook_secret="whsec_plaintext-oops")
    assert "plaintext-oops" not in str(refused.value)
    assert Settings(webhook_secret="").webhook_secret is None  # compose's unset variable
