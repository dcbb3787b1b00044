"""Helpers every benchmark shares: the machine, package versions, /proc readings, percentiles.

A benchmark's report must say where and how it was measured: `machine()`
(CPU model, cores, RAM, OS, Python, redis-server), `versions()` of the
packages on the measured path, and `command_line()` to run it again.
`/proc` readers give the CPU seconds and resident memory of any process;
`run_loop` and `exit_on_signal` are how a benchmark's main runs and stops.
"""

import asyncio
import bisect
import contextlib
import importlib.metadata
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# The machine and the software
# --------------------------------------------------------------------------------------------


def machine() -> list[tuple[str, str]]:
    """(what, value) rows: CPU, cores, RAM, OS, Python, redis-server, fd limit."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    os_release = Path("/etc/os-release").read_text() if Path("/etc/os-release").exists() else ""
    pretty = re.search(r'^PRETTY_NAME="?(.*?)"?$', os_release, re.M)
    redis_server = shutil.which("redis-server")
    redis_version = ""
    if redis_server:
        out = subprocess.run([redis_server, "--version"], capture_output=True, text=True, check=False).stdout
        found = re.search(r"v=(\S+)", out)
        redis_version = found.group(1) if found else out.strip()
    return [
        ("CPU", model.group(1).strip() if model else platform.processor() or "unknown"),
        ("Cores", f"{os.cpu_count()} (as seen by the OS)"),
        ("RAM", f"{int(mem.group(1)) / 1024 / 1024:.1f} GiB" if mem else "unknown"),
        ("OS", f"{pretty.group(1) if pretty else platform.system()}, kernel {platform.release()}"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("redis-server", redis_version or "not found"),
        ("fd limit (soft/hard)", "/".join(str(x) for x in resource.getrlimit(resource.RLIMIT_NOFILE))),
        ("Speed", f"{python_loop_s():.2f} s for 10M additions in a Python loop (one core; compare runs by it)"),
    ]


def python_loop_s(n: int = 10_000_000) -> float:
    """Seconds one core takes for `n` additions in a Python loop: machines of one name differ severalfold."""
    start, total = time.perf_counter(), 0
    for i in range(n):
        total += i
    return time.perf_counter() - start


def results_header(title: str, command: str) -> list[str]:
    """The first lines of a results file: what it measures, on which machine, when, by which command."""
    rows = ", ".join(f"{what} {value}" for what, value in machine() if what in ("CPU", "Cores", "RAM", "redis-server"))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return [f"# {title}", "", f"Machine: {rows}; run {when}. Command: `{command}`", ""]


def versions(packages: Iterable[str]) -> list[tuple[str, str]]:
    out = []
    for name in packages:
        try:
            out.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            out.append((name, "not installed"))
    return out


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that reruns this benchmark, relative to the checkout."""
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(ROOT)
    return shlex.join([str(python), "-m", module, *(sys.argv[1:] if argv is None else argv)])


def raise_fd_limit() -> int:
    """Soft fd limit up to the hard one; children started afterwards inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


# --------------------------------------------------------------------------------------------
# /proc
# --------------------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 if it is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / _CLK_TCK
    return 0.0


def proc_rss_bytes(pid: int) -> int:
    """Resident set size of a process; 0 if it is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_BYTES
    return 0


def proc_threads(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[17])
    return 0


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores) since boot."""
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in cpu[:8])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets a process holds open."""
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def established_to_port(port: int, inodes: set[int] | None = None) -> int:
    """TCP connections in ESTABLISHED state to 127.0.0.1:`port` (optionally only sockets in `inodes`)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                remote, state, inode = parts[2], parts[3], int(parts[9])
                if state != "01" or int(remote.rsplit(":", 1)[1], 16) != port:
                    continue
                if inodes is None or inode in inodes:
                    count += 1
    return count


@dataclass
class CpuSnapshot:
    """CPU seconds per role (each role a list of pids), the machine's busy seconds, and when."""

    at: float
    roles: dict[str, float]
    machine: float

    @classmethod
    def take(cls, roles: dict[str, list[int]]) -> "CpuSnapshot":
        return cls(
            time.monotonic(), {role: sum(proc_cpu_s(p) for p in pids) for role, pids in roles.items()}, machine_busy_s()
        )

    def since(self, before: "CpuSnapshot") -> "CpuDelta":
        roles = {role: self.roles[role] - before.roles.get(role, 0.0) for role in self.roles}
        return CpuDelta(self.at - before.at, roles, self.machine - before.machine)


@dataclass
class CpuDelta:
    wall_s: float
    roles: dict[str, float]  # CPU seconds per role
    machine: float  # busy CPU seconds of the whole machine

    @property
    def other(self) -> float:
        """CPU seconds spent outside every listed role (other processes on the machine, the kernel)."""
        return max(0.0, self.machine - sum(self.roles.values()))

    def cores(self, role: str) -> float:
        seconds = self.other if role == "other" else self.machine if role == "machine" else self.roles[role]
        return seconds / max(self.wall_s, 1e-9)


# --------------------------------------------------------------------------------------------
# Statistics and formatting
# --------------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values; NaN when there are none."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


WITHIN_S = 0.100  # the latency bound `Dist.within` counts against


@dataclass
class Dist:
    n: int
    p50: float
    p99: float
    max: float
    mean: float
    within: float  # share of the values ≤ WITHIN_S

    @classmethod
    def of(cls, values: Iterable[float]) -> "Dist":
        ordered = sorted(values)
        if not ordered:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan)
        return cls(
            len(ordered),
            percentile(ordered, 50),
            percentile(ordered, 99),
            ordered[-1],
            sum(ordered) / len(ordered),
            bisect.bisect_right(ordered, WITHIN_S) / len(ordered),
        )


def ms(seconds: float, digits: int = 1) -> str:
    return f"{seconds * 1000:.{digits}f}" if seconds == seconds else "-"


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 1024 / 1024:.1f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and a == a and b == b else "-"


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def git_state() -> str:
    """The commit measured, and whether the working tree differed from it (read-only git calls)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return out.stdout.rstrip() if out.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "not a git checkout"
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    subject = git("log", "-1", "--format=%s")
    state = f"`{commit}` ({subject[:80]}{'...' if len(subject) > 80 else ''})"
    if changed:
        shown = ", ".join(f"`{p}`" for p in changed[:12]) + (
            f" and {len(changed) - 12} more" if len(changed) > 12 else ""
        )
        state += f", with uncommitted changes to {shown}"
    return state


def find_py_spy() -> str:
    """py-spy on PATH, in this venv (the dev group installs it), or in `.tools/`."""
    found = shutil.which("py-spy")
    if found:
        return found
    for local in (Path(sys.executable).parent / "py-spy", ROOT / ".tools" / "bin" / "py-spy"):
        if local.exists():
            return str(local)
    return ""


# --------------------------------------------------------------------------------------------
# Running a benchmark
# --------------------------------------------------------------------------------------------


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed, on asyncio's loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result


def exit_on_signal(signum: int, frame: object) -> None:
    """A SIGTERM handler: exit, so that `finally` blocks stop every process the benchmark started."""
    raise SystemExit(128 + signum)
