"""The report, BENCHMARKS.md: how it was measured, then one section per `## ...` heading."""

import re

from bench import embedded as embedded_bench
from bench.report import ROOT, command_line, machine, versions
from bench.scenarios.common import OURS_PATH
from bench.scenarios.report_closed_loop import section_overhead, section_realistic
from bench.scenarios.report_sections import section_in_flight, section_profiles, section_ttft
from bench.scenarios.results import Results, automatic_notes, targets

SSE_RESULTS = ROOT / "bench" / "results" / "sse.md"
EMBEDDED_RESULTS = embedded_bench.OUTPUT
# Written by their own commands (bench/failover.py, bench/redis_cost.py); shown here as they are.
# Benchmarks that run on their own and keep their results in a file of their own, shown as written.
RESULT_FILES = tuple(
    ROOT / "bench" / "results" / name
    for name in (
        "worker_processes.md",
        "failover.md",
        "redis_ceiling.md",
        "webhooks.md",
        "webhooks-scripted.md",
        "listing.md",
    )
)
PACKAGES = [
    "dspy",
    "litellm",
    "openai",
    "celery",
    "kombu",
    "redis",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "sse-starlette",
    "pydantic",
    "aiohttp",
    "httpx",
]


def preamble(res: Results) -> list[str]:
    """The title, how to regenerate it, the machine, the code and what is compared."""
    args = res.args
    lines: list[str] = []
    add = lines.append
    add("# Benchmarks: the job service against a direct-call baseline")
    add("")
    add("Regenerate with one command (it starts and stops everything it measures):")
    add("")
    add("```sh")
    add(command_line("bench"))
    add("```")
    add("")
    add(f"- Run: {res.started.strftime('%Y-%m-%d %H:%M:%S %Z')}, took {res.duration_s / 60:.1f} min")
    add(f"- Code: {res.code}")
    for name, value in machine():
        add(f"- {name}: {value}")
    add("- Packages: " + ", ".join(f"{n} {v}" for n, v in versions(PACKAGES)))
    if args.env:
        add("- Extra settings for the systems under test: " + ", ".join(f"`{e}`" for e in args.env))
    add(
        f"- **Ours**: 1 API process (`uvicorn api.main:app`, uvloop + httptools, `--log-level warning`), "
        f"{args.workers} Celery worker process{'es' if args.workers > 1 else ''} (`WORKER_PROCESSES`, `make up`'s "
        f"default: one per core; each `-P threads -c "
        f"{args.concurrency}`, `WORKER_CONCURRENCY={args.concurrency}`, interactive queue, "
        f"`--loglevel INFO` as in `make up`), a private redis-server (no persistence). Clients call "
        f"`POST {OURS_PATH}` and get the finished job."
    )
    add(
        "- **Baseline**: `bench/baseline_app.py`, 1 uvicorn process, `POST /predict` awaiting "
        "`program.acall(question=...)` in the request: the same `qa` program and artifact, the same LM settings "
        "(`program.lm.build_lm`, `build_adapter`), inside `dspy.context(disable_history=True, trace=None)`. No "
        "queue, no record, no streaming, no retries. DSPy's per-call metadata lookups and type adapters are "
        "cached in it as in the worker (`patches/dspy_caches.py`), so the comparison measures the queue."
    )
    add(
        f"- **LM**: the scripted simulator (`harness/lm_simulator.py`), `LM_CACHE=false`; every question is unique "
        f"and 14 words long, so every answer is the same {res.chunks} chunks (reasoning, answer, key_concepts, "
        f'question_type with their headers). *Ours* sends `"stream": false`: the worker calls the program without '
        f"streaming and writes each field whole, as one `token` event, before the result; *ours, streaming* sends "
        f'`"stream": true` (the default): the LM streams, and every chunk is a `token` event. The baseline does '
        f"not stream."
    )
    add(
        "- **Clients**: this process, one asyncio (uvloop) task and one keep-alive HTTP/1.1 socket per client, "
        "closed loop (submit, wait for the answer, submit again), requests pre-encoded; its CPU is reported as "
        "*client*. Everything shares the same 2 cores, so the LM simulator and the clients take CPU from the "
        "system under test; *other load* is CPU used by processes outside this benchmark during the window (the "
        "machine is shared; each run first waits up to "
        f"{args.quiet_wait_s:g} s for it to drop below 0.3 cores)."
    )
    add("")
    return lines


def section_targets(res: Results) -> list[str]:
    """## Targets."""
    lines: list[str] = []
    add = lines.append
    add("## Targets")
    add("")
    lines += targets(res)
    add("")
    add(
        "*Added latency* = end-to-end time seen by the client minus the LM's own time for that request. "
        "For ours, the LM's own time is read from the simulator's records per request (request received → last "
        "chunk handed to its server); for the baseline, whose request is not streamed, the simulator records no end "
        "time, so it is the configured time (ttft + chunks / tokens-per-s)."
    )
    add("")
    return lines


def section_embedded(res: Results) -> list[str]:
    """## 6. The embedded default, from its server's slots to a batch."""
    lines: list[str] = []
    add = lines.append
    add("## 6. The embedded default, from its server's slots to a batch")
    add("")
    if res.embedded is not None:
        lines += embedded_bench.section(res.embedded)
    elif EMBEDDED_RESULTS.exists():
        text = EMBEDDED_RESULTS.read_text().strip()
        lines += [line for line in text.splitlines()[1:] if not line.startswith("# ")]
        lines += ["", f"(not run in this suite's run: from [bench/results/{EMBEDDED_RESULTS.name}]"
                  f"(bench/results/{EMBEDDED_RESULTS.name}), written by `python -m bench.embedded`)", ""]  # fmt: skip
    else:
        add("Not run (`--scenarios` without 5); `python -m bench.embedded` measures it alone.")
        add("")
    return lines


def section_sse_bench(res: Results) -> list[str]:
    """## SSE benchmark: where its results are."""
    lines: list[str] = []
    add = lines.append
    add("## SSE benchmark")
    add("")
    if SSE_RESULTS.exists():
        text = SSE_RESULTS.read_text()
        date = re.search(r"^- Date: (.*)$", text, re.M)
        add(
            f"Chunk-to-client latency and fan-out to many clients of one job are measured by "
            f"`.venv/bin/python -m bench.sse_bench`; its latest results (run {date.group(1) if date else '?'}) are "
            f"in [bench/results/sse.md](bench/results/sse.md)."
        )
    else:
        add(
            "Chunk-to-client latency and fan-out are measured by `.venv/bin/python -m bench.sse_bench`, which "
            "writes `bench/results/sse.md`; it has not been run on this checkout yet."
        )
    others = sorted(p for p in SSE_RESULTS.parent.glob("*.md") if p != SSE_RESULTS)
    if others:
        add(
            "Other results in `bench/results/`: "
            + ", ".join(f"[{p.name}](bench/results/{p.name})" for p in others)
            + " (written by their own commands)."
        )
    add("")
    return lines


def section_result_files(res: Results) -> list[str]:
    """Each results file of bench/failover.py, bench/redis_cost.py and bench/webhooks.py, its headings one
    level down."""
    lines: list[str] = []
    for path in RESULT_FILES:
        if path.exists():
            text = path.read_text().strip()
            lines += [re.sub(r"^(#+) ", r"#\1 ", line) for line in text.splitlines()]
            lines += ["", f"(from [bench/results/{path.name}](bench/results/{path.name}))", ""]
    return lines


def section_notes(res: Results) -> list[str]:
    """## Notes, when there are any."""
    lines: list[str] = []
    add = lines.append
    notes = [*automatic_notes(res), *res.notes]
    if notes:
        add("## Notes")
        add("")
        lines += [f"- {n}" for n in notes]
        add("")
    return lines


def render(res: Results) -> str:
    lines = [
        *preamble(res),
        *section_targets(res),
        *section_realistic(res),
        *section_overhead(res),
        *section_in_flight(res),
        *section_ttft(res),
        *section_profiles(res),
        *section_embedded(res),
        *section_sse_bench(res),
        *section_result_files(res),
        *section_notes(res),
    ]
    return "\n".join(lines).rstrip() + "\n"
