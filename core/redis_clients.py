"""Every Redis client the service makes, and Celery's broker address, built here with one policy.

- **A stale connection costs a retry, not an error.** After Redis restarts,
  every pooled connection is dead; the first command on each failed with
  "Connection closed by server" and became a `503` although Redis answered
  again. A command that fails on its connection is sent once more on a new
  one (redis-py's `Retry`), and connections idle for `_HEALTH_CHECK_S` are
  checked before use. While Redis is really down the retry fails too, and
  callers see the error at once; a worker's client instead keeps retrying
  for `WORKER_REDIS_RETRY_S`, long enough to ride out a failover.
- **Blocking pools**, sized by the caller: a burst waits briefly for a
  connection instead of failing with "Too many connections".
- **Sentinel when configured** (`REDIS_SENTINELS`): each new connection asks
  the Sentinels for the current primary, pools ask again every
  `_PRIMARY_CHECK_S` while their connections stay open, and a connection to
  a primary that was demoted is dropped on its first `READONLY`, so after a
  failover every client finds the new primary by itself. The broker goes through kombu's
  `sentinel://` transport to the same primary.
- Replies are decoded to `str`, parsed by hiredis.
"""

import contextlib
import time
from typing import Any
from urllib.parse import quote, unquote, urlparse

import redis
import redis.asyncio as aioredis
import redis.sentinel
from redis.asyncio import sentinel as aiosentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import AbstractBackoff, ExponentialBackoff, ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from core.settings import Settings

_HEALTH_CHECK_S = 30
_RETRY_ERRORS = (RedisConnectionError, RedisTimeoutError)
# A Sentinel that does not answer is skipped for the next one; it must not stall a connect.
_SENTINEL_TIMEOUT_S = 1.0


def _backoff() -> AbstractBackoff:
    return ExponentialWithJitterBackoff(base=0.05, cap=0.5)


def retries_spanning(retry_s: float) -> tuple[AbstractBackoff, int]:
    """A backoff (0.05 s doubling to 0.5 s, then 0.5 s each) and as many retries as add up to `retry_s`."""
    backoff = ExponentialBackoff(base=0.05, cap=0.5)
    slept, retries = 0.0, 0
    while slept < retry_s:
        retries += 1
        slept += backoff.compute(retries)
    return backoff, retries


def database(settings: Settings) -> int:
    return int((urlparse(settings.redis_url).path or "/0").lstrip("/") or 0)


def password(settings: Settings) -> str | None:
    """REDIS_PASSWORD, else REDIS_URL's, percent-decoded as a URL's user information is written."""
    if settings.redis_password is not None:
        return settings.redis_password.get_secret_value()
    encoded = urlparse(settings.redis_url).password
    return unquote(encoded) if encoded is not None else None


def secrets(settings: Settings) -> list[str]:
    """Every Redis password the settings hold, as given and as used, for the log filter."""
    found = [password(settings), urlparse(settings.redis_url).password]
    if settings.redis_sentinel_password is not None:
        found.append(settings.redis_sentinel_password.get_secret_value())
    return list(dict.fromkeys(s for s in found if s))


def _sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"socket_timeout": _SENTINEL_TIMEOUT_S, "socket_connect_timeout": _SENTINEL_TIMEOUT_S}
    if settings.redis_sentinel_password is not None:
        kwargs["password"] = settings.redis_sentinel_password.get_secret_value()
    return kwargs


def _primary_kwargs(settings: Settings) -> dict[str, Any]:
    """What a connection to the primary needs beyond its address, as REDIS_URL and the settings say."""
    kwargs: dict[str, Any] = {"db": database(settings), "password": password(settings)}
    url = urlparse(settings.redis_url)
    if url.username:
        kwargs["username"] = url.username
    if url.scheme == "rediss":
        kwargs["ssl"] = True
    return kwargs


# How often a Sentinel pool asks which server is the primary while its connections stay open.
_PRIMARY_CHECK_S = 0.5


class _PrimaryCheck:
    """When a Sentinel pool should ask again which server is the primary: every `_PRIMARY_CHECK_S`.

    redis-py asks the Sentinels only when it opens a connection, so a pool of open
    connections to a primary the Sentinels have replaced keeps writing to it until
    it is demoted, and writes it takes then (confirmed by its own replica) vanish
    when it rejoins as a replica: acknowledged jobs lost, measured in
    bench/failover.py. So the pools ask as connections are taken; a new primary
    closes the idle connections to the old one and the in-use ones as they come
    back. Sentinels that do not answer leave the pool as it is."""

    _primary_checked_at = 0.0

    def _primary_check_due(self) -> bool:
        now = time.monotonic()
        if now - self._primary_checked_at < _PRIMARY_CHECK_S:
            return False
        self._primary_checked_at = now
        return True


class _AsyncBlockingSentinelPool(_PrimaryCheck, aiosentinel.SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's address lookup with the blocking pool's wait for a free connection."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._primary_check_due():
            with contextlib.suppress(*_RETRY_ERRORS):
                await self.get_master_address()
        return await super().get_connection(*args, **kwargs)


class _BlockingSentinelPool(_PrimaryCheck, redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool):
    """The same, for synchronous clients."""

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._primary_check_due():
            with contextlib.suppress(*_RETRY_ERRORS):
                self.get_master_address()
        return super().get_connection(*args, **kwargs)


def async_client(
    settings: Settings,
    max_connections: int,
    pool_timeout_s: float = 10.0,
    socket_timeout_s: float = 30.0,
    retry_s: float = 0.0,
) -> aioredis.Redis:
    """A pooled client; a command failing on its connection is sent once more, or for `retry_s` seconds."""
    backoff, retries = retries_spanning(retry_s) if retry_s > 0 else (_backoff(), 1)
    retry = AsyncRetry(backoff, retries=retries, supported_errors=_RETRY_ERRORS)
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": pool_timeout_s,
        "decode_responses": True,
        "socket_connect_timeout": 5,
        "socket_timeout": socket_timeout_s,
        "health_check_interval": _HEALTH_CHECK_S,
        "retry": retry,
    }
    if settings.redis_sentinels:
        sentinels = aiosentinel.Sentinel(settings.sentinel_addresses(), sentinel_kwargs=_sentinel_kwargs(settings))
        client: aioredis.Redis = sentinels.master_for(
            settings.redis_master_name,
            connection_pool_class=_AsyncBlockingSentinelPool,
            **_primary_kwargs(settings),
            **options,
        )
        return client
    pool = aioredis.BlockingConnectionPool.from_url(settings.redis_url, password=password(settings), **options)
    return aioredis.Redis(connection_pool=pool)


def sync_client(settings: Settings, socket_timeout_s: float = 10.0, connect_timeout_s: float = 5.0) -> redis.Redis:
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": connect_timeout_s,
        "socket_timeout": socket_timeout_s,
        "health_check_interval": _HEALTH_CHECK_S,
        "retry": Retry(_backoff(), retries=1, supported_errors=_RETRY_ERRORS),
    }
    if settings.redis_sentinels:
        sentinels = redis.sentinel.Sentinel(settings.sentinel_addresses(), sentinel_kwargs=_sentinel_kwargs(settings))
        client: redis.Redis = sentinels.master_for(
            settings.redis_master_name,
            connection_pool_class=_BlockingSentinelPool,
            max_connections=50,
            timeout=connect_timeout_s,
            **_primary_kwargs(settings),
            **options,
        )
        return client
    return redis.Redis.from_url(settings.redis_url, password=password(settings), **options)


def broker_url(settings: Settings) -> str:
    """Celery's broker: REDIS_URL, or one `sentinel://` address per Sentinel (kombu tries them in turn)."""
    secret = password(settings)
    if not settings.redis_sentinels:
        if settings.redis_password is None:
            return settings.redis_url
        url = urlparse(settings.redis_url)
        auth = f"{quote(url.username or '')}:{quote(settings.redis_password.get_secret_value(), safe='')}@"
        return url._replace(netloc=auth + url.netloc.rpartition("@")[2]).geturl()
    auth = f":{quote(secret, safe='')}@" if secret else ""
    db = database(settings)
    return ";".join(f"sentinel://{auth}{address}/{db}" for address in settings.redis_sentinels)


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    # No kombu ack emulation: core/queue.py says why.
    options: dict[str, Any] = {"ack_emulation": False}
    if settings.redis_sentinels:
        options |= {"master_name": settings.redis_master_name, "sentinel_kwargs": _sentinel_kwargs(settings)}
    return options
