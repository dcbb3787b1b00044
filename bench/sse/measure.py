"""Measuring a run: CPU of each process (sampled), when each event is published, which LM chunk each
token event carries."""

import bisect
import contextlib
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.report import machine_busy_s, proc_cpu_s
from core import keys

FIELD_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]")


def children(pid: int) -> set[int]:
    """Pids of the direct children of `pid` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
    return found


class CpuSampler(threading.Thread):
    """CPU seconds of each role's processes (and of the whole machine), sampled every `interval_s`."""

    def __init__(self, roles: dict[str, list[int]], interval_s: float = 0.1) -> None:
        super().__init__(daemon=True, name="cpu-sampler")
        self.roles = roles
        self.interval_s = interval_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._halt = threading.Event()

    def snapshot(self) -> tuple[float, dict[str, float]]:
        now = time.time()
        values = {role: sum(proc_cpu_s(pid) for pid in pids) for role, pids in self.roles.items()}
        values["machine"] = machine_busy_s()
        values["other"] = values["machine"] - sum(values[role] for role in self.roles)
        return now, values

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append(self.snapshot())
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def _at(self, role: str, t: float) -> float:
        times = [s[0] for s in self.samples]
        i = bisect.bisect_left(times, t)
        if i <= 0:
            return self.samples[0][1][role]
        if i >= len(times):
            return self.samples[-1][1][role]
        (t0, v0), (t1, v1) = self.samples[i - 1], self.samples[i]
        return v0[role] + (v1[role] - v0[role]) * (t - t0) / (t1 - t0)

    def cores(self, role: str, t0: float, t1: float) -> float:
        """Average CPU use in cores (1.0 = one core busy) between t0 and t1."""
        return (self._at(role, t1) - self._at(role, t0)) / max(t1 - t0, 1e-9)

    def seconds(self, role: str, t0: float, t1: float) -> float:
        return self._at(role, t1) - self._at(role, t0)

    def peak_cores(self, role: str, t0: float, t1: float, width_s: float = 1.0) -> float:
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        best = 0.0
        j = 0
        for i, (ti, vi) in enumerate(inside):
            j = max(j, i + 1)
            while j < len(inside) and inside[j][0] - ti < width_s:
                j += 1
            if j >= len(inside):
                break
            tj, vj = inside[j]
            best = max(best, (vj[role] - vi[role]) / (tj - ti))
        return best if best else self.cores(role, t0, t1)


class PublishObserver(threading.Thread):
    """Records when each event of a job is published on its channel (what the API's hub sees)."""

    def __init__(self, redis_url: str, job_id: str) -> None:
        super().__init__(daemon=True, name="publish-observer")
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(keys.job_channel(job_id))
        deadline = time.monotonic() + 5
        while self.pubsub.get_message(timeout=0.5) is None:  # the subscribe confirmation
            if time.monotonic() > deadline:
                raise TimeoutError("no pub/sub subscribe confirmation")
        self.times: dict[int, float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            message = self.pubsub.get_message(timeout=0.2)
            if message and message["type"] == "message":
                now = time.time()
                event = json.loads(message["data"])
                self.times[int(event["seq"])] = now

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.pubsub.close()
        self.client.close()


@dataclass
class Matching:
    """Which LM chunk each token event came from (see `match_tokens`)."""

    chunk_of: dict[int, int]  # token event seq -> index of the last chunk its text comes from
    first_chunk_of: dict[int, int]
    token_events: int
    chunks: int
    merged_events: int  # token events whose text spans more than one chunk
    unmatched_events: int  # token events whose text is not where expected in the LM output
    header_chunks: int  # chunks that are field headers or separators, never sent as tokens
    undelivered_content_chunks: int  # chunks with field text that no token event carries


def match_tokens(chunk_texts: list[str], tokens: list[tuple[int, str, str]]) -> Matching:
    """Align token events (seq, field, text) with the LM's chunks by position in the completion.

    The LM's completion is the concatenation of its chunks; it contains
    `[[ ## field ## ]]` headers. Each field's token events, in order, are
    found one after the other inside that field's region of the completion;
    an event is matched to the chunk holding its *last* character (the newest
    text it carries: the event cannot exist before that chunk was sent). An
    event that carries several chunks (the listener held some back) counts as
    merged; its older chunks waited longer than we report.
    """
    starts: list[int] = []
    offset = 0
    for text in chunk_texts:
        starts.append(offset)
        offset += len(text)
    full = "".join(chunk_texts)
    headers = list(FIELD_HEADER.finditer(full))
    regions: dict[str, tuple[int, int]] = {}
    header_spans: list[tuple[int, int]] = []
    for i, header in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(full)
        regions.setdefault(header.group(1), (header.end(), end))
        header_spans.append((header.start(), header.end()))
    cursor = {name: start for name, (start, _) in regions.items()}
    chunk_of: dict[int, int] = {}
    first_chunk_of: dict[int, int] = {}
    covered: set[int] = set()
    unmatched = merged = 0
    for seq, field_name, text in tokens:
        if field_name not in regions or not text:
            unmatched += 1
            continue
        pos = full.find(text, cursor[field_name], regions[field_name][1])
        if pos < 0:
            unmatched += 1
            continue
        cursor[field_name] = pos + len(text)
        first = bisect.bisect_right(starts, pos) - 1
        last = bisect.bisect_right(starts, pos + len(text) - 1) - 1
        chunk_of[seq], first_chunk_of[seq] = last, first
        covered.update(range(first, last + 1))
        merged += last > first
    header_chunks = undelivered = 0
    for i, text in enumerate(chunk_texts):
        if i in covered:
            continue
        begin = starts[i]
        in_header = any(a <= begin + len(text) - len(text.lstrip()) < b for a, b in header_spans)
        if in_header or not text.strip():
            header_chunks += 1
        else:
            undelivered += 1
    return Matching(
        chunk_of, first_chunk_of, len(tokens), len(chunk_texts), merged, unmatched, header_chunks, undelivered
    )
