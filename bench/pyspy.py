"""Reading `py-spy record --format raw` output, shared by the suite's profile and the SSE bench's.

A raw file has one line per distinct stack: `frame;frame;...;innermost count`,
each frame `func (path:line)` with an absolute path.
"""

import re
from collections.abc import Iterator
from pathlib import Path

from bench.report import ROOT

_FRAME = re.compile(r"(.*) \((.*?)(:\d+)?\)$")
# Path prefixes cut from a frame's file: what is left is `pkg/mod.py`, `asyncio/tasks.py`, `api/main.py`.
_PATH_MARKERS = ("site-packages/", "lib/python3.11/", "lib/python3.12/", f"{ROOT}/")


def raw_stacks(raw_path: Path) -> Iterator[tuple[list[str], int]]:
    """(frames, outermost first; samples) for every stack of a raw file."""
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        yield stack.split(";"), int(count)


def frame_key(frame: str, line: bool = True) -> str:
    """`func (/abs/.../site-packages/pkg/mod.py:123)` -> `func (pkg/mod.py:123)`, or `func (pkg/mod.py)`
    without `line`."""
    found = _FRAME.match(frame)
    if not found:
        return frame
    func, path, lineno = found.groups()
    for marker in _PATH_MARKERS:
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    suffix = (lineno or "") if line else ""
    return f"{func} ({path}{suffix})"
