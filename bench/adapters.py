"""Which adapter suits the embedded model: `python -m bench.adapters [--arithmetic 50] [--output ...]`.

The `qa` program from its shipped artifact, called directly as a worker
calls it (bench/embedded_server.py), once with DSPy's ChatAdapter and once
with its JSONAdapter (the signature's JSON schema as a structured output,
which llama.cpp turns into a grammar), on the same embedded server
(`make up`'s slots and threads, as many calls in flight as slots), over
the 18 held-out questions of `bench/qa_heldout.json` and `--arithmetic`
questions "What is N plus N?". Reports per adapter: parsed (no
`AdapterParseError`), `question_type` as labelled (held-out), answer
containing 2N (arithmetic), latency per call, and what failed (an
`LMTimeoutError` is the machine's load, not the adapter). `LM_ADAPTER` (`auto`)
picks for the embedded model what this measured best (program/lm.py).

Writes `--output` (`bench/results/adapters.md`).
"""

import argparse
import json
import signal
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.embedded_server import Call, QaCaller, batch_question, run_calls
from bench.report import ROOT, command_line, git_state, results_header, table, versions
from core.settings import get_settings, usable_cores
from harness.processes import start_embedded_lm

OUTPUT = ROOT / "bench" / "results" / "adapters.md"
HELDOUT = ROOT / "bench" / "qa_heldout.json"
ADAPTERS = ("chat", "json")


@dataclass
class AdapterRun:
    adapter: str
    heldout: list[tuple[Call, str]]  # each call with its labelled question_type
    arithmetic: list[tuple[Call, int]]  # each call with N


def measure(arithmetic: int) -> list[AdapterRun]:
    heldout = json.loads(HELDOUT.read_text())
    numbers = list(range(1, arithmetic + 1))
    slots = get_settings().embedded_lm_slots
    proc, base = start_embedded_lm("bench-adapters-lm")
    runs = []
    try:
        for adapter in ADAPTERS:
            print(f"adapter {adapter}", file=sys.stderr)
            caller = QaCaller(base, adapter)
            labelled = run_calls(caller, [item["question"] for item in heldout], slots)
            sums = run_calls(caller, [batch_question(n) for n in numbers], slots)
            runs.append(
                AdapterRun(
                    adapter,
                    list(zip(labelled.calls, [item["question_type"] for item in heldout], strict=True)),
                    list(zip(sums.calls, numbers, strict=True)),
                )
            )
    finally:
        proc.stop()
    return runs


def section(runs: list[AdapterRun]) -> list[str]:
    def latency(calls: list[Call]) -> str:
        seconds = sorted(c.seconds for c in calls)
        return f"{seconds[len(seconds) // 2]:.1f}" if seconds else "-"

    rows = []
    for run in runs:
        held = [call for call, _ in run.heldout]
        sums = [call for call, _ in run.arithmetic]
        rows.append(
            [
                run.adapter,
                f"{sum(c.parsed for c in held)}/{len(held)}",
                f"{sum(c.parsed and c.question_type == label for c, label in run.heldout)}/{len(held)}",
                f"{sum(c.parsed for c in sums)}/{len(sums)}",
                f"{sum(c.parsed and str(2 * n) in c.answer for c, n in run.arithmetic)}/{len(sums)}",
                latency(held + sums),
                ", ".join(f"{name} {n}" for name, n in Counter(c.failure for c in held + sums if c.failure).items())
                or "-",
            ]
        )
    return table(
        [
            "adapter",
            "held-out parsed",
            "held-out question_type as labelled",
            "arithmetic parsed",
            "arithmetic answer right",
            "latency p50 (s)",
            "failures",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.adapters", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arithmetic", type=int, default=50, help='questions "What is N plus N?"')
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    runs = measure(args.arithmetic)
    settings = get_settings()
    lines = [
        *results_header("The embedded model's adapter: chat against JSON", command_line("bench.adapters")),
        f"- Code: {git_state()}",
        "- Packages: " + ", ".join(f"{n} {v}" for n, v in versions(["dspy", "litellm", "xllamacpp"])),
        f"- Server: {settings.embedded_lm_slots} slots, {settings.embedded_lm_threads or usable_cores()} threads; "
        f"as many calls in flight; LM_MAX_TOKENS {settings.lm_max_tokens}",
        "",
        *section(runs),
        "",
    ]
    text = "\n".join(lines)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
