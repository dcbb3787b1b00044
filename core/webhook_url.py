"""The one parser of a `webhook_url`: the API's check at submit time and the sender's every attempt use it.

Two parsers disagree at the edges: `urlsplit` accepted control characters
and host names valid only under IDNA 2003 (full-width letters, ligatures)
that `httpx.URL`, which sends the request, refuses; such a URL once passed
the check and then broke every attempt to send it. So the check parses with
what sends: `httpx.URL` (IDNA 2008, no control characters), and keeps the
parts it will send to (the host as it goes on the wire, in ASCII).
"""

from dataclasses import dataclass

import httpx

URL_MAX_CHARS = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}


class TargetRefused(ValueError):
    """A receiver the settings do not allow; the message says why and what would allow it."""


@dataclass(frozen=True)
class ReceiverURL:
    """A `webhook_url` as the sender sees it."""

    url: httpx.URL

    @property
    def scheme(self) -> str:
        return self.url.scheme

    @property
    def host(self) -> str:
        """The host as resolved and sent (TLS SNI): ASCII, IDNA-encoded, an IPv6 literal without brackets."""
        return self.url.raw_host.decode("ascii")

    @property
    def names(self) -> frozenset[str]:
        """Every spelling of the host an operator may have listed in WEBHOOK_ALLOWED_HOSTS."""
        return frozenset({self.host.lower(), self.url.host.lower()})

    @property
    def port(self) -> int:
        return self.url.port or _DEFAULT_PORTS[self.scheme]

    @property
    def host_header(self) -> str:
        return self.url.netloc.decode("ascii")

    def pinned(self, address: str) -> httpx.URL:
        """The same URL with its host replaced by `address`, one it was checked to resolve to."""
        return self.url.copy_with(host=address)


def parse_receiver_url(url: str) -> ReceiverURL:
    """`url` as a receiver, or `TargetRefused` saying what is wrong with it."""
    if len(url) > URL_MAX_CHARS:
        raise TargetRefused(f"webhook_url is {len(url)} characters; the limit is {URL_MAX_CHARS}")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as e:
        raise TargetRefused(f"webhook_url is not a valid URL ({e})") from e
    if parsed.scheme not in _DEFAULT_PORTS or not parsed.raw_host:
        raise TargetRefused("webhook_url must be an absolute http(s) URL")
    if parsed.userinfo:
        raise TargetRefused("webhook_url must not hold credentials; the signature authenticates the sender")
    # httpx leaves the port's range to the socket, which would refuse it at every attempt.
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise TargetRefused(f"webhook_url is not a valid URL (port {parsed.port} is out of range)")
    return ReceiverURL(parsed)
