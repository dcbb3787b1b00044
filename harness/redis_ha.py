"""A Redis primary, its replicas and a quorum of Sentinels on loopback, for tests and benchmarks.

Sentinels notice a dead primary after `down_after_ms` and promote a
replica; `kill_primary` + `wait_for_failover` drive that, and `restart` brings
a killed server back as a replica of whichever primary is current (started
as one from the outset, so it can never answer as a stale primary).
"""

import shutil
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from harness.processes import ARTIFACTS, Proc, free_port, wait_for

MASTER_NAME = "dspy-jobs"
# Sentinel pings each server once a second: at 1000 ms one late reply marks a
# healthy primary down, and runs saw a second failover right after the first
# (bench/results/failover-down-after-1000.md). Three missed pings it is.
DOWN_AFTER_MS = 3000
_FAILOVER_TIMEOUT_MS = 10000


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("a Sentinel group needs redis-server on PATH")
    return binary


def _server_command(port: int, replica_of: int | None, password: str | None) -> list[str]:
    workdir = ARTIFACTS / f"redis-ha-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [_redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(workdir), "--maxmemory-policy", "noeviction"]
    if replica_of is not None:
        cmd += ["--replicaof", "127.0.0.1", str(replica_of)]
    if password is not None:
        cmd += ["--requirepass", password, "--masterauth", password]
    return cmd


def _answers(port: int, password: str | None = None) -> bool:
    return bool(redis.Redis(port=port, password=password, socket_connect_timeout=0.5).ping())


@dataclass
class SentinelGroup:
    servers: dict[int, Proc] = field(default_factory=dict)  # by port
    sentinels: dict[int, Proc] = field(default_factory=dict)
    master_name: str = MASTER_NAME
    down_after_ms: int = DOWN_AFTER_MS
    password: str | None = None  # of the servers (the Sentinels have none)

    @classmethod
    def start(
        cls, replicas: int = 2, sentinels: int = 3, down_after_ms: int = DOWN_AFTER_MS, password: str | None = None
    ) -> "SentinelGroup":
        group = cls(down_after_ms=down_after_ms, password=password)
        primary = free_port()
        group._start_server(primary, None)
        for _ in range(replicas):
            group._start_server(free_port(), primary)
        group._wait_for_replicas(primary, replicas)
        for _ in range(sentinels):
            group._start_sentinel(free_port(), primary)
        wait_for(lambda: group._sentinels_agree(primary, replicas, sentinels), 30, "Sentinels to see the group")
        return group

    def _start_server(self, port: int, replica_of: int | None) -> None:
        proc = Proc(f"redis-ha-{port}", _server_command(port, replica_of, self.password), {})
        wait_for(lambda: _answers(port, self.password), 10, f"redis-server on {port}", proc)
        self.servers[port] = proc

    def _start_sentinel(self, port: int, primary: int) -> None:
        workdir = ARTIFACTS / f"sentinel-{port}"
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {self.master_name} 127.0.0.1 {primary} 2\n"
            f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.master_name} {_FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {self.master_name} 2\n"
            + (f"sentinel auth-pass {self.master_name} {self.password}\n" if self.password else "")
        )
        proc = Proc(f"sentinel-{port}", [_redis_binary(), str(conf), "--sentinel"], {})
        wait_for(lambda: _answers(port), 10, f"sentinel on {port}", proc)
        self.sentinels[port] = proc

    def _wait_for_replicas(self, primary: int, replicas: int) -> None:
        client = redis.Redis(port=primary, password=self.password, decode_responses=True)

        def synced() -> bool:
            info = client.info("replication")
            online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            return sum(1 for r in online if r.get("state") == "online") >= replicas

        wait_for(synced, 30, f"{replicas} replicas in sync with {primary}")

    def _sentinels_agree(self, primary: int, replicas: int, sentinels: int) -> bool:
        for port in self.sentinels:
            client = redis.Redis(port=port, decode_responses=True)
            state: dict[str, Any] = client.sentinel_master(self.master_name)  # type: ignore[assignment]
            if int(state["port"]) != primary or int(state["num-slaves"]) < replicas:
                return False
            if int(state["num-other-sentinels"]) < sentinels - 1:
                return False
        return True

    @property
    def sentinel_addresses(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinels)

    def env(self) -> dict[str, str]:
        """What a service process needs to go through these Sentinels."""
        env = {
            "REDIS_SENTINELS": self.sentinel_addresses,
            "REDIS_MASTER_NAME": self.master_name,
            "REDIS_URL": f"redis://127.0.0.1:{self.primary_port()}/0",
        }
        if self.password:
            env["REDIS_PASSWORD"] = self.password
        return env

    def primary_port(self) -> int:
        """The primary the Sentinels name now."""
        for port in self.sentinels:
            try:
                address = redis.Redis(port=port, socket_timeout=1).sentinel_get_master_addr_by_name(self.master_name)
                return int(address[1])  # type: ignore[index]
            except (redis.RedisError, OSError, TypeError):
                continue
        raise RuntimeError("no Sentinel answers")

    def primary(self) -> redis.Redis:
        return redis.Redis(port=self.primary_port(), password=self.password, decode_responses=True)

    def kill_primary(self) -> int:
        port = self.primary_port()
        self.servers[port].stop(signal.SIGKILL)
        return port

    def wait_for_failover(self, old: int, timeout_s: float = 30) -> int:
        """The new primary's port, once the Sentinels name one and it accepts writes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            port = self.primary_port()
            if port != old:
                try:
                    server = redis.Redis(port=port, password=self.password, socket_timeout=1)
                    if server.info("replication")["role"] == "master":
                        return port
                except (redis.RedisError, OSError):
                    pass
            time.sleep(0.1)
        raise TimeoutError(f"no failover from {old} within {timeout_s}s")

    def restart(self, port: int) -> None:
        """Bring a stopped server back, as a replica of the current primary."""
        self._start_server(port, self.primary_port())

    def stop(self) -> None:
        for proc in [*self.sentinels.values(), *self.servers.values()]:
            proc.stop()
