"""Runs `make up`'s processes in the foreground: prefixed output, restarts with backoff, one Ctrl-C stops all.

A process that exits while the stack runs is started again after a pause
that doubles with each exit (1 s, 2 s, 4 s ... 30 s); one that stayed up a
minute starts over from 1 s. A worker's crash therefore costs that worker a
restart (its jobs come back to the others, or to it, by their leases), not
the service: the API and everything else keep running. A process that exits
`max_restarts` times within `window_s` is given up on, with a banner that
says which and why (its last lines are just above it), and the rest keep
running. Ctrl-C or SIGTERM stops every process at once: SIGTERM to each
process group, SIGKILL to whatever is left after `stop_timeout_s`.

Written here rather than taken from a package: honcho (Procfile runner)
stops everything when one process exits, and supervisord or circus would
each need a daemon and a configuration file of their own for four lines of
policy.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TextIO

_COLOURS = (36, 33, 32, 35, 34, 31, 96, 93)


@dataclass
class Service:
    name: str
    command: list[str]
    env: Mapping[str, str]
    cwd: str
    popen: subprocess.Popen[bytes] | None = None
    exits: deque[float] = field(default_factory=deque)
    backoff_s: float = 1.0
    started_at: float = 0.0
    restart_at: float | None = None
    given_up: bool = False


class Supervisor:
    def __init__(
        self,
        out: TextIO = sys.stdout,
        max_restarts: int = 5,
        window_s: float = 60.0,
        max_backoff_s: float = 30.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self._out = out
        self._colour = out.isatty()
        self._max_restarts = max_restarts
        self._window_s = window_s
        self._max_backoff_s = max_backoff_s
        self._stop_timeout_s = stop_timeout_s
        self._services: list[Service] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._width = 8

    def add(self, name: str, command: list[str], env: Mapping[str, str], cwd: str) -> None:
        self._services.append(Service(name, command, env, cwd))
        self._width = max(self._width, len(name))

    def say(self, text: str, name: str = "system") -> None:
        colour = 0 if name == "system" else _COLOURS[[s.name for s in self._services].index(name) % len(_COLOURS)]
        prefix = f"{time.strftime('%H:%M:%S')} {name.ljust(self._width)} | "
        if self._colour and colour:
            prefix = f"\033[0m\033[{colour}m{prefix}\033[0m"
        with self._lock:
            for line in text.splitlines() or [""]:
                print(prefix + line, file=self._out, flush=True)

    def pids(self) -> dict[str, int]:
        """The running processes by name (tests look them up here)."""
        return {s.name: s.popen.pid for s in self._services if s.popen is not None and s.popen.poll() is None}

    def run(self) -> int:
        """Start everything and supervise until Ctrl-C or SIGTERM; the exit code is 0 after a clean stop."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for service in self._services:
                self._start(service)
            while not self._stopping.wait(0.2):
                for service in self._services:
                    self._check(service)
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping.set()

    def _start(self, service: Service) -> None:
        service.popen = subprocess.Popen(
            service.command,
            env=dict(service.env),
            cwd=service.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        service.started_at = time.monotonic()
        self.say(f"started (pid {service.popen.pid})", service.name)
        threading.Thread(target=self._pump, args=(service, service.popen), daemon=True).start()

    def _pump(self, service: Service, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdout is not None
        for raw in iter(popen.stdout.readline, b""):
            self.say(raw.decode("utf-8", "replace").rstrip("\n"), service.name)

    def _check(self, service: Service) -> None:
        if service.given_up or service.popen is None:
            return
        now = time.monotonic()
        if service.restart_at is not None:
            if now >= service.restart_at:
                service.restart_at = None
                self._start(service)
            return
        code = service.popen.poll()
        if code is None:
            return
        if now - service.started_at >= self._window_s:
            service.backoff_s = 1.0
        service.exits.append(now)
        while service.exits and service.exits[0] < now - self._window_s:
            service.exits.popleft()
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        if len(service.exits) > self._max_restarts:
            service.given_up = True
            self.say(
                "\n".join(
                    [
                        "!" * 64,
                        f" {service.name} {how}, and has exited {len(service.exits)} times in the last "
                        f"{self._window_s:.0f} s: not restarting it again.",
                        f" Its last lines are above (prefixed '{service.name}'). The other services keep running;",
                        " fix the cause and run `make up` again.",
                        "!" * 64,
                    ]
                )
            )
            return
        self.say(f"{service.name} {how}; restarting it in {service.backoff_s:g} s")
        service.restart_at = now + service.backoff_s
        service.backoff_s = min(service.backoff_s * 2, self._max_backoff_s)

    def _stop_all(self) -> None:
        self.say("stopping every service")
        running = [s.popen for s in self._services if s.popen is not None and s.popen.poll() is None]
        for popen in running:
            _signal_group(popen, signal.SIGTERM)
        deadline = time.monotonic() + self._stop_timeout_s
        for popen in running:
            try:
                popen.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _signal_group(popen, signal.SIGKILL)
                popen.wait()


def _signal_group(popen: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, sig)
