"""Every Redis client the service makes (Celery's own aside), built here with one policy.

- **A stale connection costs a retry, not an error.** After Redis restarts,
  every pooled connection is dead; the first command on each failed with
  "Connection closed by server" and became a `503` although Redis answered
  again. A command that fails on its connection is sent once more on a new
  one (redis-py's `Retry`), and connections idle for `_HEALTH_CHECK_S` are
  checked before use. While Redis is really down the retry fails too, and
  callers see the error at once.
- **Blocking pools**, sized by the caller: a burst waits briefly for a
  connection instead of failing with "Too many connections".
- Replies are decoded to `str`, parsed by hiredis.
"""

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from core.settings import Settings

_HEALTH_CHECK_S = 30
_RETRY_ERRORS = (RedisConnectionError, RedisTimeoutError)


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(base=0.05, cap=0.5)


def async_client(
    settings: Settings, max_connections: int, pool_timeout_s: float = 10.0, socket_timeout_s: float = 30.0
) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections,
        timeout=pool_timeout_s,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=socket_timeout_s,
        health_check_interval=_HEALTH_CHECK_S,
        retry=AsyncRetry(_backoff(), retries=1, supported_errors=_RETRY_ERRORS),
    )
    return aioredis.Redis(connection_pool=pool)


def sync_client(settings: Settings, socket_timeout_s: float = 10.0, connect_timeout_s: float = 5.0) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=socket_timeout_s,
        health_check_interval=_HEALTH_CHECK_S,
        retry=Retry(_backoff(), retries=1, supported_errors=_RETRY_ERRORS),
    )
