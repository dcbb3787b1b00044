"""What every part of the suite shares: the systems compared, the LM's timing, `log`."""

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bench import load
from harness.lm_simulator import _apply_stop, _tokens, scripted_answer

QA_FIELDS = ["reasoning", "answer", "key_concepts", "question_type"]
COMPLETION_MARKER = "[[ ## completed ## ]]"

# Systems compared: ours without and with token streaming (the `stream` field of
# `POST /jobs`), and the direct-call baseline.
OURS, OURS_STREAMING, BASE = "ours", "ours, streaming", "baseline"
SYSTEMS = (OURS, OURS_STREAMING, BASE)
NOT_SYSTEM = ("lm", "client", "idle")  # CPU roles that are not the system under test
OURS_PATH = "/jobs?wait=60"
BASE_PATH = "/predict"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def answer_chunks() -> int:
    """Chunks (tokens) the scripted LM sends for a bench question to the `qa` program."""
    text = _apply_stop(scripted_answer(load.new_question(), QA_FIELDS), [COMPLETION_MARKER])
    return len(_tokens(text))


def body_extra(system: str) -> dict[str, Any]:
    """What a system's requests add to `{"question": ...}`."""
    return {} if system == BASE else {"stream": system == OURS_STREAMING}


def max_overlap(intervals: Iterable[tuple[float, float]]) -> tuple[int, float]:
    """Most intervals open at one moment, and that moment."""
    points = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda p: (p[0], p[1]))
    best, best_t, current = 0, 0.0, 0
    for t, step in points:
        current += step
        if current > best:
            best, best_t = current, t
    return best, best_t


@dataclass(frozen=True)
class LMTiming:
    ttft_s: float
    tokens_per_s: float

    def answer_s(self, chunks: int) -> float:
        """The LM's configured time for a whole answer (what a non-streamed request sleeps)."""
        return self.ttft_s + (chunks / self.tokens_per_s if self.tokens_per_s > 0 else 0.0)

    def __str__(self) -> str:
        return f"`--ttft-s {self.ttft_s:g} --tokens-per-s {self.tokens_per_s:g}`"
