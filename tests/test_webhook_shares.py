"""How a worker's webhook slots are shared per API key and per receiver (worker/webhook_shares.py; no processes)."""

import importlib
import socket
import sys
from collections.abc import Iterator

import publicsuffixlist
import pytest

import worker.webhook_shares
from worker.webhook_shares import Shares, Slot, receiver_of


@pytest.mark.parametrize(
    ("host", "receiver"),
    [
        ("example.com", "example.com"),
        ("hooks.example.com", "example.com"),
        ("a.b.c.example.com", "example.com"),
        ("HOOKS.Example.COM.", "example.com"),
        ("hooks.example.co.uk", "example.co.uk"),
        ("x.y.example.com.au", "example.com.au"),
        # Private suffixes count: two users' pages on one hosting domain are two receivers.
        ("alice.github.io", "alice.github.io"),
        ("hooks.alice.github.io", "alice.github.io"),
        # IDNA names come as they are sent (ASCII), and the list knows both forms.
        ("a.xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("hooks.xn--p1ai", "hooks.xn--p1ai"),
        ("a.hooks.xn--p1ai", "hooks.xn--p1ai"),
        # No registrable domain: the name stands alone.
        ("github.io", "github.io"),
        ("localhost", "localhost"),
        ("receiver.internal", "receiver.internal"),
        ("a.receiver.internal", "receiver.internal"),
        ("93.184.216.34", "93.184.216.34"),
        ("2606:2800:220:1::1", "2606:2800:220:1::/64"),
        ("2606:2800:220:1:ffff::9", "2606:2800:220:1::/64"),
    ],
)
def test_a_receiver_is_the_registrable_domain_of_its_host(host: str, receiver: str) -> None:
    assert receiver_of(host) == receiver


def test_subdomains_and_ports_of_one_receiver_share_its_slots() -> None:
    shares = Shares(per_key=8, per_receiver=2)
    slots = [Slot("", receiver_of(h)) for h in ("a.slow.example", "b.slow.example", "c.slow.example")]
    assert [shares.take(s) for s in slots] == [True, True, False]
    assert shares.take(Slot("", receiver_of("fast.example")))
    shares.give_back(slots[0])
    assert shares.take(slots[2])


def test_one_key_holds_at_most_its_share_whatever_its_receivers() -> None:
    shares = Shares(per_key=2, per_receiver=4)
    mallory = [Slot("mallory", f"r{i}.example") for i in range(3)]
    assert [shares.take(s) for s in mallory] == [True, True, False]
    assert shares.take(Slot("alice", "r0.example")), "another key still gets a slot on the same receiver"
    shares.give_back(mallory[1])
    assert shares.take(mallory[2])


def test_deliveries_without_a_key_have_no_key_share() -> None:
    # An API without keys has one tenant: only the receiver share applies.
    shares = Shares(per_key=1, per_receiver=1)
    assert all(shares.take(Slot("", f"r{i}.example")) for i in range(5))


@pytest.fixture
def no_network() -> Iterator[list[str]]:
    """Every attempt to resolve a name or open a connection, recorded (audit hooks cannot be removed: it is
    switched off after the test)."""
    attempts: list[str] = []
    recording = [True]

    def hook(event: str, args: tuple[object, ...]) -> None:
        if recording[0] and event in {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "urllib.Request"}:
            attempts.append(f"{event} {args!r}")

    sys.addaudithook(hook)
    yield attempts
    recording[0] = False


def test_the_public_suffix_list_is_read_from_the_package_without_any_network_call(no_network: list[str]) -> None:
    socket.getaddrinfo("127.0.0.1", 80)
    assert len(no_network) == 1, "the hook sees lookups"
    no_network.clear()

    importlib.reload(publicsuffixlist)
    module = importlib.reload(worker.webhook_shares)

    assert module.receiver_of("hooks.example.co.uk") == "example.co.uk"
    assert no_network == []
