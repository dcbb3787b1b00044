"""Which IP addresses a webhook may not be sent to: an explicit table, the same on every Python version.

`ipaddress`'s `is_private` / `is_global` changed between patch releases
(CPython 3.11.7 calls 6to4 addresses that wrap 127.0.0.1, and `fec0::/10`,
public), so the policy is ours: network membership against the IANA
special-purpose registries (IPv4 and IPv6, checked 2026-12), the multicast
blocks and IPv6's deprecated site-local block. IPv6 outside global unicast
(`2000::/3`) is refused whatever it is, since nothing else there is routed on
the internet. Prefixes that carry an IPv4 address (IPv4-mapped, NAT64, 6to4,
Teredo) are judged by the IPv4 they carry: a 6to4 address wrapping
127.0.0.1 reaches loopback.

Whole IETF blocks are refused even where the registry lists a few global
anycast services inside them (PCP and TURN anycast in `192.0.0.0/24` and
`2001::/23`): none of them is a webhook receiver.
"""

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

IPv4Of = Callable[[int], tuple[IPv4Address, ...]]


def _low_32(value: int) -> tuple[IPv4Address, ...]:
    return (IPv4Address(value & 0xFFFFFFFF),)


def _six_to_four(value: int) -> tuple[IPv4Address, ...]:
    # 2002:AABB:CCDD::/48: the IPv4 follows the 16-bit prefix (RFC 3056).
    return (IPv4Address((value >> 80) & 0xFFFFFFFF),)


def _teredo(value: int) -> tuple[IPv4Address, ...]:
    # 2001:0:SSSS:SSSS:flags:port:CCCC:CCCC: the server's IPv4, then the client's, inverted (RFC 4380).
    return IPv4Address((value >> 64) & 0xFFFFFFFF), IPv4Address(~value & 0xFFFFFFFF)


@dataclass(frozen=True)
class Special:
    """One block of the table: its network, the kind of address it holds, and IANA's name for it."""

    network: IPv4Network | IPv6Network
    kind: str | None  # None: public (for a carrier: the address it carries decides)
    name: str
    # For a prefix that carries IPv4 addresses: which ones (the addresses then decide, not the prefix).
    carries: IPv4Of | None = None


def _s(network: str, kind: str | None, name: str, carries: IPv4Of | None = None) -> Special:
    return Special(ip_network(network), kind, name, carries)


_TABLE = (
    # IANA IPv4 Special-Purpose Address Registry, and the multicast block.
    _s("0.0.0.0/0", None, "public"),
    _s("0.0.0.0/8", "unspecified", '"this network"'),
    _s("10.0.0.0/8", "private", "Private-Use"),
    _s("100.64.0.0/10", "non-public", "Shared Address Space (carrier-grade NAT)"),
    _s("127.0.0.0/8", "loopback", "Loopback"),
    _s("169.254.0.0/16", "link-local", "Link Local"),
    _s("172.16.0.0/12", "private", "Private-Use"),
    _s("192.0.0.0/24", "non-public", "IETF Protocol Assignments"),
    _s("192.0.2.0/24", "documentation", "Documentation (TEST-NET-1)"),
    _s("192.88.99.0/24", "reserved", "6to4 Relay Anycast (deprecated)"),
    _s("192.168.0.0/16", "private", "Private-Use"),
    _s("198.18.0.0/15", "benchmarking", "Benchmarking"),
    _s("198.51.100.0/24", "documentation", "Documentation (TEST-NET-2)"),
    _s("203.0.113.0/24", "documentation", "Documentation (TEST-NET-3)"),
    _s("224.0.0.0/4", "multicast", "Multicast"),
    _s("240.0.0.0/4", "reserved", "Reserved"),
    _s("255.255.255.255/32", "reserved", "Limited Broadcast"),
    # IANA IPv6 Special-Purpose Address Registry, multicast and site-local; only global unicast is routed.
    _s("::/0", "reserved", "not global unicast"),
    _s("2000::/3", None, "Global Unicast"),
    _s("::/128", "unspecified", "Unspecified Address"),
    _s("::1/128", "loopback", "Loopback Address"),
    _s("::/96", "reserved", "IPv4-compatible (deprecated)"),
    _s("::ffff:0:0/96", None, "IPv4-mapped", _low_32),
    _s("64:ff9b::/96", None, "NAT64", _low_32),
    _s("64:ff9b:1::/48", "non-public", "IPv4-IPv6 Translation (local use)"),
    _s("100::/64", "non-public", "Discard-Only Address Block"),
    _s("100:0:0:1::/64", "non-public", "Dummy IPv6 Prefix"),
    _s("2001::/23", "non-public", "IETF Protocol Assignments"),
    _s("2001::/32", None, "Teredo", _teredo),
    _s("2001:2::/48", "benchmarking", "Benchmarking"),
    _s("2001:db8::/32", "documentation", "Documentation"),
    _s("2002::/16", None, "6to4", _six_to_four),
    _s("3fff::/20", "documentation", "Documentation"),
    _s("5f00::/16", "non-public", "Segment Routing (SRv6) SIDs"),
    _s("fc00::/7", "private", "Unique-Local"),
    _s("fe80::/10", "link-local", "Link-Local Unicast"),
    _s("fec0::/10", "private", "Site-Local (deprecated)"),
    _s("ff00::/8", "multicast", "Multicast"),
)
# The most specific block decides (Teredo inside 2001::/23, ::1 inside ::/96, all of them inside ::/0).
TABLE = tuple(sorted(_TABLE, key=lambda s: -s.network.prefixlen))


@dataclass(frozen=True)
class NonPublic:
    """Why an address is refused: its kind, and the blocks that say so."""

    kind: str
    block: Special
    # For an address that carries an IPv4 one: that address and its own block, which decided.
    carried: tuple[IPv4Address, Special] | None = None

    def describe(self) -> str:
        """`a loopback address (Loopback 127.0.0.0/8)`, `a loopback address (6to4 2002::/16 carrying 127.0.0.1,
        Loopback 127.0.0.0/8)`."""
        where = f"{self.block.name} {self.block.network}"
        if self.carried is not None:
            address, inner = self.carried
            where = f"{where} carrying {address}, {inner.name} {inner.network}"
        return f"a {self.kind} address ({where})"


def _block_of(ip: IPv4Address | IPv6Address) -> Special:
    return next(s for s in TABLE if s.network.version == ip.version and ip in s.network)


def non_public(address: str) -> NonPublic | None:
    """Why `address` (an IP literal; an IPv6 zone is ignored) may not receive webhooks; None if it may."""
    ip = ip_address(address.split("%", 1)[0])
    block = _block_of(ip)
    if block.carries is None:
        return None if block.kind is None else NonPublic(block.kind, block)
    for carried in block.carries(int(ip)):
        inner = _block_of(carried)
        if inner.kind is not None:
            return NonPublic(inner.kind, block, (carried, inner))
    return None
