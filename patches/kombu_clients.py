"""kombu's Redis channel keeps one `redis.Redis` client per connection pool.

kombu's Redis transport builds a new client for nearly every command it
sends outside its consumer loop (a publish, an ack, a task event, the
exchange lookup before a publish): `Channel.conn_or_acquire()` calls
`_create_client()` each time, and constructing a client copies its table of
response callbacks, about 180 us on the benchmark machine. A client is only
a handle on the channel's connection pool and is safe to share between
threads, so each channel keeps one per pool (kombu replaces the pool after a
connection error, and the new pool gets a new client).
"""

import contextlib
from collections.abc import Iterator
from typing import Any

from kombu.transport import redis as kombu_redis

from core.settings import Settings


@contextlib.contextmanager
def conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
    if client:
        yield client
        return
    pool = self.pool
    cached = self.__dict__.get("_dj_client")
    if cached is None or cached[0] is not pool:
        cached = self.__dict__["_dj_client"] = (pool, self._create_client())
    yield cached[1]


def apply(settings: Settings) -> bool:
    if not callable(getattr(kombu_redis.Channel, "_create_client", None)):
        return False
    kombu_redis.Channel.conn_or_acquire = conn_or_acquire  # type: ignore[method-assign]
    return installed()


def installed() -> bool:
    return kombu_redis.Channel.conn_or_acquire is conn_or_acquire
