"""Real processes for tests and benchmarks: redis-server, the LM simulator, the embedded LM, workers, the API.

Each process logs to `test-artifacts/<name>.log` so a failing test leaves
the whole story behind. Nothing here is mocked.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, proc: "Proc | None" = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}:\n{proc.tail()}"
            )
        try:
            if check():
                return
        except (OSError, httpx.HTTPError, redis.RedisError):
            pass
        time.sleep(0.1)
    tail = proc.tail() if proc else ""
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}\n{tail}")


class Proc:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.name = name
        self.hostname: str | None = None  # a worker's Celery hostname
        self.is_python = Path(cmd[0]).name.startswith("python")
        self.log_path = ARTIFACTS / f"{name}.log"
        self._log = self.log_path.open("ab")
        # Where this process's part of a log shared by name with earlier runs begins.
        self._log_start = self._log.tell()
        self._log.write(f"\n==== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def own_log(self) -> str:
        """What this process logged (the file also holds earlier processes of the same name)."""
        with self.log_path.open("rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    def tail(self, n: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._dump_stacks()
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode

    def _dump_stacks(self) -> None:
        """Where a Python process stood when it would not stop: its threads' stacks go into its log."""
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not self.is_python or not Path(py_spy).exists():
            return
        self._log.write(f"\n==== {time.strftime('%H:%M:%S')} did not stop in time; its threads:\n".encode())
        self._log.flush()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [py_spy, "dump", "--pid", str(self.popen.pid)], stdout=self._log, stderr=subprocess.STDOUT, timeout=20
            )
        self._log.flush()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def start_redis(name: str = "redis", appendonly: bool = False, port: int | None = None) -> tuple[Proc | None, str]:
    """A private redis-server on a free port, or `REDIS_URL` when none is installed.

    With `appendonly`, data lives in a directory named after the port, so a
    server restarted on the same port finds it again.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        url = os.environ.get("REDIS_URL")
        if not url:
            raise RuntimeError("tests need redis-server on PATH or REDIS_URL pointing at a Redis they may flush")
        return None, url
    port = port or free_port()
    workdir = ARTIFACTS / f"{name}-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    proc = Proc(
        name,
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
            "--dir",
            str(workdir),
            "--maxmemory-policy",
            "noeviction",
        ],
        {},
    )
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: bool(redis.Redis.from_url(url).ping()), 10, "redis-server", proc)
    return proc, url


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def start_lm_simulator(name: str = "lm-simulator", *args: str) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(name, python_module("harness.lm_simulator", "--port", str(port), *args), {})
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, 20, "LM simulator", proc)
    return proc, f"{base}/v1"


def start_embedded_lm(name: str = "embedded-lm", *args: str) -> tuple[Proc, str]:
    """The embedded model's server (stack/embedded_lm.py) on a free port, with `args` (`--slots 2`), once it answers."""
    port = free_port()
    proc = Proc(name, python_module("stack.embedded_lm", "--port", str(port), *args), {})
    base = f"http://127.0.0.1:{port}/v1"
    wait_for(lambda: httpx.get(f"{base}/models").status_code == 200, 120, "the embedded LM", proc)
    return proc, base


def worker_command(app: str, queues: str, concurrency: int, hostname: str, loglevel: str = "INFO") -> list[str]:
    """A threads-pool Celery worker of `app`, without the start-up chatter between workers (mingle, gossip)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "-P",
        "threads",
        "-c",
        str(concurrency),
        "-Q",
        queues,
        "-n",
        hostname,
        "--loglevel",
        loglevel,
        "--without-mingle",
        "--without-gossip",
    ]


def start_worker(env: dict[str, str], name: str = "worker", queues: str = "interactive", concurrency: int = 16) -> Proc:
    hostname = f"{name}-{free_port()}@test"
    proc = Proc(name, worker_command("worker.celery_app", queues, concurrency, hostname), env)
    client = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    wait_for(lambda: client.zscore("dj:workers", hostname) is not None, 60, f"worker {hostname}", proc)
    proc.hostname = hostname
    return proc


def start_api(env: dict[str, str], name: str = "api") -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(
        name,
        [
            sys.executable,
            "-m",
            "uvicorn",
            "api.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env,
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, 30, "API", proc)
    return proc, base
