"""Container healthcheck: `python -m worker.healthcheck` exits 0 while a worker
on this host has a fresh heartbeat in Redis (see worker/heartbeat.py)."""

import socket
import sys
import time

import redis

from core import keys
from core.redis_clients import sync_client
from core.settings import get_settings


def main() -> int:
    settings = get_settings()
    suffix = f"@{socket.gethostname()}"
    try:
        client = sync_client(settings, socket_timeout_s=2, connect_timeout_s=2)
        beats = client.zrangebyscore(keys.WORKERS, time.time() - settings.worker_offline_after_s, "+inf")
    except redis.RedisError as e:
        print(f"unhealthy: Redis does not answer: {e}")
        return 1
    if any(str(name).endswith(suffix) for name in beats):
        return 0
    print(f"unhealthy: no fresh heartbeat from a worker on {suffix[1:]}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
