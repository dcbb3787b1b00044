"""How one worker's webhook slots are shared: no API key, and no receiver, may hold them all.

A receiver is its registrable domain (`hooks.a.example.co.uk` and
`b.example.co.uk:8443` are both `example.co.uk`), from the Public Suffix
List bundled with `publicsuffixlist` (read from the package, never fetched):
one slow receiver's subdomains and ports share one receiver's slots. An IPv4
literal is itself; an IPv6 literal is its /64, which one host commonly holds
whole. Deliveries without an owner (an API without keys: one tenant) share
no key's slots.
"""

from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address, ip_network

from publicsuffixlist import PublicSuffixList

_SUFFIXES = PublicSuffixList()


def receiver_of(host: str) -> str:
    """What one receiver's host names and addresses have in common (`host` as sent: ASCII, IDNA-encoded)."""
    try:
        ip = ip_address(host)
    except ValueError:
        name = host.lower().rstrip(".") or host
        # A public suffix itself (`github.io`), or a single label, has no registrable domain: the name stands alone.
        return _SUFFIXES.privatesuffix(name) or name
    if isinstance(ip, IPv6Address):
        return str(ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(frozen=True)
class Slot:
    """Whose a delivery in flight is: its key's owner ('' for none) and its receiver."""

    owner: str
    receiver: str


class Shares:
    def __init__(self, per_key: int, per_receiver: int) -> None:
        self._per_key = per_key
        self._per_receiver = per_receiver
        self._by_key: Counter[str] = Counter()
        self._by_receiver: Counter[str] = Counter()

    def take(self, slot: Slot) -> bool:
        """Whether a delivery of `slot` may start now; if so, it holds its slot until `give_back`."""
        if self._by_receiver[slot.receiver] >= self._per_receiver:
            return False
        if slot.owner and self._by_key[slot.owner] >= self._per_key:
            return False
        self._by_receiver[slot.receiver] += 1
        if slot.owner:
            self._by_key[slot.owner] += 1
        return True

    def give_back(self, slot: Slot) -> None:
        _release(self._by_receiver, slot.receiver)
        if slot.owner:
            _release(self._by_key, slot.owner)


def _release(held: Counter[str], name: str) -> None:
    held[name] -= 1
    # Counter keeps zero counts: dropped, so receivers seen once do not accumulate.
    if held[name] <= 0:
        del held[name]
