"""The embedded server on its own, for bench/embedded.py and bench/adapters.py.

Every measurement here calls the server the way a worker does: the `qa`
program from its shipped artifact, through DSPy, with the LM and adapter the
settings give the workers (program/lm.py), except the prefill one, which
sends the adapter's messages itself to read the server's own timings.

- `slot_sweep`: for each slot count and thread count, a server of its own
  and as many calls in flight as it has slots: tokens/s, items/s, latency
  per call, parse rate.
- `prefill`: the server's prompt-processing time per call for the same
  program's prompt with different questions, with its prefix cache and
  without (`cache_prompt: false`).
- `built_prompt`: the prompt the server builds from a DSPy call's messages,
  to check the instructions are in it.
"""

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.report import Dist
from harness.processes import start_embedded_lm


def batch_question(n: int) -> str:
    return f"What is {n} plus {n}?"


@dataclass
class Call:
    seconds: float
    parsed: bool
    completion_tokens: int = 0
    failure: str | None = None
    answer: str = ""
    question_type: str = ""


@dataclass
class CallsRun:
    in_flight: int
    calls: list[Call] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def items_per_s(self) -> float:
        return len(self.calls) / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return sum(c.completion_tokens for c in self.calls) / self.seconds if self.seconds else 0.0

    @property
    def parsed(self) -> int:
        return sum(c.parsed for c in self.calls)

    @property
    def latency(self) -> Dist | None:
        return Dist.of([c.seconds for c in self.calls]) if self.calls else None

    @property
    def failures(self) -> Counter[str]:
        return Counter(c.failure for c in self.calls if c.failure)


class QaCaller:
    """The `qa` program as a worker runs it, against the server at `lm_base`, with `adapter` (`auto`: the
    workers' choice)."""

    def __init__(self, lm_base: str, adapter: str = "auto") -> None:
        from core.offline import disable_runtime_downloads

        disable_runtime_downloads()
        from core.programs import parse_artifact
        from core.settings import Settings
        from program.lm import adapter_name, build_adapter, build_lm
        from program.registry import program_specs

        settings = Settings(lm_api_base=lm_base, lm_cache=False, lm_adapter=adapter)
        spec = program_specs(settings)["qa"]
        self.module = spec.build()
        state, _ = parse_artifact(spec.name, spec.artifact, spec.artifact.read_bytes())
        self.module.load_state(state)
        self.module.set_lm(None)
        self.lm, self.adapter = build_lm(settings), build_adapter(settings)
        self.adapter_name = adapter_name(settings)
        self.settings = settings

    def call(self, question: str) -> Call:
        import dspy

        started = time.monotonic()
        with dspy.context(lm=self.lm, adapter=self.adapter, disable_history=True, trace=None, track_usage=True):
            try:
                prediction = self.module(question=question)
            except Exception as e:
                return Call(time.monotonic() - started, False, failure=type(e).__name__)
        usage = prediction.get_lm_usage() or {}
        tokens = sum(int(u.get("completion_tokens") or 0) for u in usage.values())
        return Call(
            time.monotonic() - started,
            True,
            tokens,
            answer=str(prediction.answer),
            question_type=str(prediction.question_type),
        )

    def messages(self, question: str) -> list[dict[str, Any]]:
        """What the adapter sends the LM for `question`: instructions, demos, then the question."""
        predictor = self._predictor()
        messages: list[dict[str, Any]] = self.adapter.format(
            predictor.signature, predictor.demos, {"question": question}
        )
        return messages

    def instructions(self) -> str:
        """The program's instructions (its signature's docstring, or what the optimizer wrote)."""
        return str(self._predictor().signature.instructions)

    def _predictor(self) -> Any:
        [(_, predictor)] = self.module.named_predictors()
        return predictor


def run_calls(caller: QaCaller, questions: list[str], in_flight: int) -> CallsRun:
    """`questions` through the program, `in_flight` at a time."""
    run = CallsRun(in_flight)
    started = time.monotonic()
    with ThreadPoolExecutor(in_flight) as pool:
        run.calls = list(pool.map(caller.call, questions))
    run.seconds = time.monotonic() - started
    return run


@dataclass
class SweepRow:
    slots: int
    threads: int
    run: CallsRun


def slot_sweep(slot_counts: list[int], thread_counts: list[int], calls_per_slot: int) -> list[SweepRow]:
    """A server per (slots, threads), each kept full: `calls_per_slot` calls per slot, as many in flight as slots."""
    rows = []
    for threads in thread_counts:
        for slots in slot_counts:
            proc, base = start_embedded_lm(
                f"bench-embedded-lm-{slots}x{threads}", "--slots", str(slots), "--threads", str(threads)
            )
            try:
                caller = QaCaller(base)
                # Every slot prefills the program's instructions and demos once: not what a running server pays.
                run_calls(caller, [batch_question(0)] * slots, slots)
                questions = [batch_question(n) for n in range(1, slots * calls_per_slot + 1)]
                rows.append(SweepRow(slots, threads, run_calls(caller, questions, slots)))
            finally:
                proc.stop()
    return rows


@dataclass
class Prefill:
    cache: bool
    prompt_ms: list[float] = field(default_factory=list)
    evaluated_tokens: list[int] = field(default_factory=list)
    cached_tokens: list[int] = field(default_factory=list)


def prefill(lm_base: str, calls: int) -> tuple[Prefill, Prefill]:
    """The server's prefill time per call of `qa` (one token generated), without then with the prefix cache.

    One call at a time, so each lands on the slot that served the one before: with the cache, that slot
    already holds the instructions and demos. The first cached call, which fills the cache, is left out."""
    caller = QaCaller(lm_base)
    results = (Prefill(cache=False), Prefill(cache=True))
    with httpx.Client(base_url=lm_base, timeout=300) as client:
        for result in results:
            for n in range(calls + (1 if result.cache else 0)):
                body = {
                    "model": caller.lm.model.split("/", 1)[1],
                    "messages": caller.messages(batch_question(500 + n)),
                    "max_tokens": 1,
                    "cache_prompt": result.cache,
                }
                timings = client.post("/chat/completions", json=body).raise_for_status().json()["timings"]
                if result.cache and n == 0:
                    continue
                result.prompt_ms.append(float(timings["prompt_ms"]))
                result.evaluated_tokens.append(int(timings["prompt_n"]))
                result.cached_tokens.append(int(timings.get("cache_n", 0)))
    return results


def built_prompt(lm_base: str, messages: list[dict[str, Any]]) -> str:
    """The prompt the server builds from chat `messages` with its chat template (llama.cpp's /apply-template)."""
    server = lm_base.removesuffix("/v1")
    prompt: str = httpx.post(f"{server}/apply-template", json={"messages": messages}, timeout=30).json()["prompt"]
    return prompt
