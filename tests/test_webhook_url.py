"""The one parser of a webhook_url (core/webhook_url.py): what it refuses, and that what it accepts can be sent.

The URLs refused here are those `urlsplit` accepted at submit time and
`httpx.URL` then refused at every attempt, killing the sender (no processes).
"""

import asyncio

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.settings import Settings
from core.webhook_url import TargetRefused, parse_receiver_url
from core.webhooks import check_target
from worker.webhook_shares import receiver_of

# Both were accepted by the check that parsed with urlsplit (the host resolves to loopback through Python's
# IDNA 2003 codec), and both made httpx.URL raise in the sender.
FULL_WIDTH_LOCALHOST = "".join(chr(ord(c) + 0xFEE0) for c in "localhost")
POISON = {
    "a control character in the path": "http://127.0.0.1:9/hook\x01",
    "DEL in the path": "http://127.0.0.1:9/hook\x7f",
    "a full-width host name (IDNA 2003 only)": f"http://{FULL_WIDTH_LOCALHOST}:9/hook",
    "a ligature in the host name (IDNA 2003 only)": "https://ﬁle.example/hook",
    "a circled digit in the host name (IDNA 2003 only)": "https://①.example/hook",
}


@pytest.mark.parametrize("url", POISON.values(), ids=POISON.keys())
def test_what_the_sender_cannot_send_is_refused_as_an_invalid_url(url: str) -> None:
    with pytest.raises(TargetRefused, match="webhook_url is not a valid URL"):
        parse_receiver_url(url)


@pytest.mark.parametrize("url", POISON.values(), ids=POISON.keys())
def test_the_submit_time_check_refuses_them_before_resolving_anything(url: str) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        raise AssertionError("nothing is resolved for a URL that cannot be sent")

    with pytest.raises(TargetRefused, match="not a valid URL"):
        asyncio.run(check_target(url, Settings(webhook_allow_private=True), resolve))


def test_an_idna_2008_name_is_kept_as_it_goes_on_the_wire() -> None:
    receiver = parse_receiver_url("https://Bücher.example:8443/in?x=1")
    assert receiver.host == "xn--bcher-kva.example"
    assert receiver.host_header == "xn--bcher-kva.example:8443"
    assert receiver.names == {"xn--bcher-kva.example", "bücher.example"}
    assert receiver.port == 8443


def test_the_ports_range_is_checked_here_not_at_every_attempt() -> None:
    with pytest.raises(TargetRefused, match="port 99999 is out of range"):
        parse_receiver_url("https://hooks.example.com:99999/in")
    assert parse_receiver_url("https://hooks.example.com/in").port == 443
    assert parse_receiver_url("http://hooks.example.com/in").port == 80


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1::1"])
def test_the_request_goes_to_the_checked_address_with_the_same_path_and_query(address: str) -> None:
    receiver = parse_receiver_url("https://hooks.example.com:8443/in/a%20b?x=1&y=2")
    pinned = receiver.pinned(address)
    assert pinned.raw_host.decode() == address
    assert (pinned.port, pinned.raw_path) == (8443, b"/in/a%20b?x=1&y=2")


# Printable and non-printable ASCII, a few IDNA 2003/2008 troublemakers, and the characters URLs are made of.
_CHARS = st.sampled_from([chr(c) for c in range(0x80)] + list("ßẞςﬁ①ｅ٠۰\u200d\u200cÄ.-:/?#[]@%"))


@settings(max_examples=400, deadline=None)
@given(
    scheme=st.sampled_from(["http", "https"]),
    host=st.text(_CHARS, min_size=1, max_size=20),
    rest=st.text(_CHARS, max_size=30),
)
def test_whatever_the_parser_accepts_the_sender_can_build_its_request_for(scheme: str, host: str, rest: str) -> None:
    try:
        receiver = parse_receiver_url(f"{scheme}://{host}{rest}")
    except TargetRefused:
        return
    assert receiver.host.isascii() and receiver.host_header.isascii()
    assert receiver_of(receiver.host)
    for address in ("93.184.216.34", "2606:2800:220:1::1"):
        request = httpx.Request("POST", receiver.pinned(address), headers={"host": receiver.host_header})
        assert request.url.raw_host.decode() == address
