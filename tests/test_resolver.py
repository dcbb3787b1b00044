"""Receivers' names are looked up on a bounded pool of their own, within a time limit (core/resolver.py; no
processes). The system resolver is held by a stand-in for `socket.getaddrinfo` that blocks until released."""

import asyncio
import socket
import threading
from typing import Any

import pytest

from core.resolver import NotResolved, Resolver


def test_a_lookup_that_hangs_is_given_up_after_the_timeout_and_holds_only_the_resolvers_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    started: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    # Only this test's names hang: threads that other tests left behind in this process still look up theirs.
    def hanging_getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        if not host.endswith(".slow.example"):
            return real_getaddrinfo(host, *args, **kwargs)
        started.append(threading.current_thread().name)
        release.wait(10)
        raise socket.gaierror("released")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    resolver = Resolver(threads=2, timeout_s=0.2)

    async def main() -> list[BaseException | list[str]]:
        lookups = [resolver(f"r{i}.slow.example", 443) for i in range(4)]
        results = await asyncio.gather(*lookups, return_exceptions=True)
        # The loop's default pool is untouched: it still runs work at once.
        assert await asyncio.to_thread(lambda: "free") == "free"
        return results

    try:
        results = asyncio.run(main())
    finally:
        release.set()
        resolver.close()

    assert all(isinstance(r, NotResolved) and "did not resolve within 0.2 s" in str(r) for r in results)
    assert len(started) == 2, "at most the resolver's own threads ever held"
    assert all(name.startswith("webhook-dns") for name in started)


def test_an_ip_literal_is_itself_and_a_name_that_does_not_exist_is_not_resolved() -> None:
    resolver = Resolver(threads=1, timeout_s=5)
    try:
        assert asyncio.run(resolver("2606:2800:220:1::1", 443)) == ["2606:2800:220:1::1"]
        assert asyncio.run(resolver("localhost", 80))
        with pytest.raises(NotResolved, match=r"no-such-host\.invalid"):
            asyncio.run(resolver("no-such-host.invalid", 443))
        with pytest.raises(NotResolved, match="does not resolve"):
            asyncio.run(resolver("a" * 64 + ".example", 443))  # a label too long for the IDNA codec
    finally:
        resolver.close()
