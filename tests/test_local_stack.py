"""`make up`'s launcher (stack/up.py) with real processes: a process that dies is restarted, the API
keeps answering, Ctrl-C stops everything."""

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest
import redis

from harness.processes import Proc, free_port, start_lm_simulator, wait_for

pytestmark = pytest.mark.e2e

ROLES = {
    "redis": "redis-server",
    "worker1": "-n worker1@",
    "worker2": "-n worker2@",
    "bulk": "-n bulk@",
    "api": "api.main:app",
    "flower": "flower",
}


def children(pid: int) -> dict[str, int]:
    """The launcher's processes by role (from /proc: whoever has it as parent)."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))
        if ppid != pid:
            continue
        for role, marker in ROLES.items():
            if marker in cmdline:
                found[role] = int(entry.name)
    return found


def listening_addresses(port: int) -> set[str]:
    """The local addresses a TCP socket listens on at `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


class Launched(NamedTuple):
    proc: Proc
    api: str
    flower_port: int
    redis_url: str


@pytest.fixture
def launcher() -> Iterator[Launched]:
    lm, lm_base = start_lm_simulator("lm-simulator-launcher")
    api_port, flower_port = free_port(), free_port()
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "LM_MODEL": "openai/simulated",
        "LM_API_BASE": lm_base,
        "API_PORT": str(api_port),
        "FLOWER_PORT": str(flower_port),
        "FLOWER_BASIC_AUTH": "admin:launcher-test",
        "WORKER_HEARTBEAT_S": "0.5",
        "JOB_LEASE_S": "3",
        "WORKER_PROCESSES": "2",
    }
    proc = Proc("local-stack", [sys.executable, "-m", "stack.up"], env)
    try:
        wait_for(lambda: "DSPy jobs is up" in proc.own_log(), 120, "the stack to be up", proc)
        yield Launched(proc, f"http://127.0.0.1:{api_port}", flower_port, env["REDIS_URL"])
    finally:
        proc.stop(signal.SIGINT, timeout_s=30)
        lm.stop()


def test_a_process_that_dies_is_restarted_while_the_api_keeps_answering(launcher: Launched) -> None:
    proc, api, _, _ = launcher
    first = children(proc.pid)
    assert set(first) == set(ROLES), first
    for role in ("worker1", "worker2", "bulk", "flower", "redis"):
        before = children(proc.pid)[role]
        os.kill(before, signal.SIGKILL)
        assert httpx.get(f"{api}/health", timeout=5).status_code == 200, f"the API stopped answering ({role})"
        wait_for(
            lambda role=role, before=before: children(proc.pid).get(role, before) != before,  # type: ignore[misc]
            20,
            f"{role} to be restarted",
            proc,
        )
    # Everything came back: a job runs end to end.
    wait_for(lambda: httpx.get(f"{api}/ready", timeout=5).status_code == 200, 60, "the stack to be ready", proc)
    job = httpx.post(f"{api}/jobs", params={"wait": 30}, json={"question": "still here?"}, timeout=40).json()
    assert job["status"] == "succeeded"
    # The API itself too.
    os.kill(children(proc.pid)["api"], signal.SIGKILL)
    wait_for(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 30, "the API to be back", proc)
    log = proc.own_log()
    assert "worker1 was killed by SIGKILL; restarting it in 1 s" in log
    assert proc.popen.poll() is None


def test_ctrl_c_stops_every_process(launcher: Launched) -> None:
    proc = launcher.proc
    pids = children(proc.pid).values()
    proc.popen.send_signal(signal.SIGINT)
    proc.popen.wait(30)
    time.sleep(0.5)
    assert [pid for pid in pids if Path(f"/proc/{pid}").exists()] == []
    assert proc.popen.returncode == 0


def test_flower_listens_on_loopback_only_and_redis_has_a_memory_limit(launcher: Launched) -> None:
    proc = launcher.proc
    wait_for(lambda: bool(listening_addresses(launcher.flower_port)), 30, "Flower to listen", proc)
    # 127.0.0.1 as /proc writes it (little-endian hex); never 0.0.0.0 or ::.
    assert listening_addresses(launcher.flower_port) == {"0100007F"}
    with redis.Redis.from_url(launcher.redis_url) as r:
        assert int(r.config_get("maxmemory")["maxmemory"]) == 2 * 1024**3
