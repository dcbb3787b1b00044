"""Name lookups for webhook receivers, on threads of their own and within a time limit.

`getaddrinfo` blocks its thread and cannot be interrupted. On the event
loop's default pool, a caller's names that take long to resolve (their own
slow DNS server) held threads every other `to_thread` needs (a worker's
heartbeat, its program refresh). Here they can hold at most this pool's
threads, and the caller waits at most `timeout_s`; a lookup still running
then finishes on its thread, unwaited for.
"""

import asyncio
import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor

from core.webhook_url import TargetRefused


class NotResolved(TargetRefused):
    """The host did not resolve (or not in time): at submit time a refusal, at delivery a failure to retry."""


class Resolver:
    def __init__(self, threads: int, timeout_s: float) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="webhook-dns")
        self._timeout_s = timeout_s

    async def __call__(self, host: str, port: int) -> list[str]:
        """Every address `host` resolves to (an IP literal is itself)."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        lookup = asyncio.get_running_loop().run_in_executor(
            self._pool, socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM
        )
        try:
            async with asyncio.timeout(self._timeout_s):
                infos = await lookup
        except TimeoutError as e:
            raise NotResolved(f"webhook_url host {host!r} did not resolve within {self._timeout_s:g} s") from e
        except (OSError, UnicodeError) as e:  # socket.gaierror; a label too long for IDNA
            raise NotResolved(f"webhook_url host {host!r} does not resolve ({e})") from e
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
