"""The receiver address table (core/special_addresses.py): what it refuses and why (no processes).

Several of these are addresses CPython 3.11.7's `ipaddress` calls global
(6to4 wrapping loopback or the metadata address, site-local `fec0::/10`):
the table decides, not the Python patch level.
"""

import pytest

from core.special_addresses import TABLE, non_public


@pytest.mark.parametrize(
    ("address", "kind", "block"),
    [
        ("0.1.2.3", "unspecified", "0.0.0.0/8"),
        ("10.1.2.3", "private", "10.0.0.0/8"),
        ("100.64.0.1", "non-public", "100.64.0.0/10"),
        ("100.127.255.254", "non-public", "100.64.0.0/10"),
        ("127.0.0.2", "loopback", "127.0.0.0/8"),
        ("169.254.169.254", "link-local", "169.254.0.0/16"),
        ("172.31.0.1", "private", "172.16.0.0/12"),
        ("192.0.0.170", "non-public", "192.0.0.0/24"),
        ("192.0.2.1", "documentation", "192.0.2.0/24"),
        ("192.88.99.1", "reserved", "192.88.99.0/24"),
        ("192.168.0.1", "private", "192.168.0.0/16"),
        ("198.19.255.1", "benchmarking", "198.18.0.0/15"),
        ("198.51.100.7", "documentation", "198.51.100.0/24"),
        ("203.0.113.9", "documentation", "203.0.113.0/24"),
        ("239.255.255.250", "multicast", "224.0.0.0/4"),
        ("250.1.2.3", "reserved", "240.0.0.0/4"),
        ("255.255.255.255", "reserved", "255.255.255.255/32"),
        ("::", "unspecified", "::/128"),
        ("::1", "loopback", "::1/128"),
        ("::7f00:1", "reserved", "::/96"),  # IPv4-compatible 127.0.0.1, deprecated
        ("::5db8:d822", "reserved", "::/96"),  # IPv4-compatible, even of a public address
        ("64:ff9b:1::a00:1", "non-public", "64:ff9b:1::/48"),
        ("100::1", "non-public", "100::/64"),
        ("2001:2::1", "benchmarking", "2001:2::/48"),
        ("2001:10::1", "non-public", "2001::/23"),
        ("2001:db8::1", "documentation", "2001:db8::/32"),
        ("3fff:fff::1", "documentation", "3fff::/20"),
        ("5f00::1", "non-public", "5f00::/16"),
        ("fc00::1", "private", "fc00::/7"),
        ("fd12:3456::1", "private", "fc00::/7"),
        ("fe80::1", "link-local", "fe80::/10"),
        ("fe80::1%eth0", "link-local", "fe80::/10"),
        ("fec0::1", "private", "fec0::/10"),
        ("feff::1", "private", "fec0::/10"),
        ("ff02::1", "multicast", "ff00::/8"),
        ("4000::1", "reserved", "::/0"),  # outside global unicast 2000::/3
    ],
)
def test_special_purpose_addresses_are_refused_by_their_block(address: str, kind: str, block: str) -> None:
    refused = non_public(address)
    assert refused is not None and refused.carried is None
    assert (refused.kind, str(refused.block.network)) == (kind, block)


@pytest.mark.parametrize(
    ("address", "kind", "carrier", "carried"),
    [
        ("::ffff:127.0.0.1", "loopback", "::ffff:0:0/96", "127.0.0.1"),
        ("::ffff:a9fe:a9fe", "link-local", "::ffff:0:0/96", "169.254.169.254"),
        ("2002:7f00:1::1", "loopback", "2002::/16", "127.0.0.1"),
        ("2002:a9fe:a9fe::", "link-local", "2002::/16", "169.254.169.254"),
        ("2002:a00:1:1::1", "private", "2002::/16", "10.0.0.1"),
        ("64:ff9b::7f00:1", "loopback", "64:ff9b::/96", "127.0.0.1"),
        ("64:ff9b::a9fe:a9fe", "link-local", "64:ff9b::/96", "169.254.169.254"),
        # Teredo: the server's IPv4 in bits 32-63, the client's inverted in the last 32.
        ("2001:0:7f00:1::1", "loopback", "2001::/32", "127.0.0.1"),
        ("2001:0:4136:e378:8000:63bf:5601:5601", "link-local", "2001::/32", "169.254.169.254"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "documentation", "2001::/32", "192.0.2.45"),
    ],
)
def test_an_address_that_carries_an_ipv4_one_is_refused_for_the_one_it_carries(
    address: str, kind: str, carrier: str, carried: str
) -> None:
    refused = non_public(address)
    assert refused is not None and refused.carried is not None
    assert (refused.kind, str(refused.block.network), str(refused.carried[0])) == (kind, carrier, carried)
    assert f"carrying {carried}" in refused.describe()


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "100.63.255.255",  # just below the shared block
        "100.128.0.0",  # just above it
        "192.0.1.1",
        "192.31.196.1",  # AS112, globally reachable
        "223.255.255.255",
        "2606:2800:220:1::1",
        "2a00:1450:4001::1",
        "::ffff:93.184.216.34",
        "64:ff9b::808:808",
        "2002:5db8:d822::1",  # 6to4 of a public address
        "2001:0:4136:e378:8000:63bf:a247:2dcb",  # Teredo, server and client both public
    ],
)
def test_public_addresses_are_accepted(address: str) -> None:
    assert non_public(address) is None


def test_the_table_holds_no_block_twice_and_every_address_falls_in_one() -> None:
    networks = [s.network for s in TABLE]
    assert len(set(networks)) == len(networks)
    assert {str(s.network) for s in TABLE if s.network.prefixlen == 0} == {"0.0.0.0/0", "::/0"}
    # Most specific first, so a block inside another (Teredo in 2001::/23) decides for its addresses.
    assert [s.network.prefixlen for s in TABLE] == sorted((s.network.prefixlen for s in TABLE), reverse=True)


def test_the_description_names_the_kind_and_the_block() -> None:
    refused = non_public("2002:a9fe:a9fe::")
    assert refused is not None
    assert refused.describe() == (
        "a link-local address (6to4 2002::/16 carrying 169.254.169.254, Link Local 169.254.0.0/16)"
    )
