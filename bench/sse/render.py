"""The SSE benchmark's report (bench/results/sse.md): one function per `## ...` section."""

import argparse
import datetime
import os
from collections import Counter

from bench.report import WITHIN_S, Dist, command_line, machine, ms, versions
from bench.sse.stack import Run
from harness.processes import ROOT

PACKAGES = ["dspy", "celery", "redis", "fastapi", "uvicorn", "sse-starlette", "starlette", "uvloop", "httptools"]


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.1f} %" if fraction == fraction else "-"


def _incomplete(run: Run) -> str:
    return (
        f"- N={run.clients}: {run.clients - run.complete} clients incomplete: {_failures(run.failures)} "
        f"(of which while connecting, before a first event: {_failures(run.connect_failures)})"
    )


def _failures(counter: Counter[str]) -> str:
    return "; ".join(f"{n} {reason}" for reason, n in counter.most_common()) or "none"


def _preamble(args: argparse.Namespace, started: datetime.datetime, duration_s: float) -> list[str]:
    """The title, the command, the machine, the stack and how delays are measured."""
    lines: list[str] = []
    add = lines.append
    add("# SSE benchmark: chunk-to-client latency and fan-out")
    add("")
    add(f"- Command: `cd {ROOT} && {command_line('bench.sse_bench')}`")
    add(f"- Date: {started.strftime('%Y-%m-%d %H:%M:%S %Z')} (took {duration_s:.0f} s)")
    for name, value in machine():
        add(f"- {name}: {value}")
    add("- Packages: " + ", ".join(f"{n} {v}" for n, v in versions(PACKAGES)))
    add(
        f"- Stack: private redis-server, the scripted LM (`harness/lm_simulator.py`), 1 Celery worker "
        f"(threads pool), 1 API process (`uvicorn api.main:app`, uvloop + httptools when installed, "
        f"`API_REDIS_MAX_CONNECTIONS={args.api_redis_max_connections}`), all on 127.0.0.1. Clients: raw asyncio "
        f"sockets on uvloop in {args.client_procs} separate process(es), at most {args.connect_concurrency} "
        f"connections being set up at once per process."
    )
    add(
        f"- Every job: the `qa` program (ChainOfThought: reasoning, answer, key_concepts, question_type) on a "
        f"{args.words}-word question, so about {2 * args.words + 12} token events; the LM streams one word per chunk."
    )
    add("")
    add("Delays are measured from the moment the LM simulator hands a chunk to its HTTP server to the moment the")
    add("client's socket delivers the bytes of the matching `token` event. *chunk → publish* is the worker's share")
    add("(LiteLLM, DSPy's StreamListener, the Lua append), *publish → client* the API's share (pub/sub hub, the")
    add("per-client generator, sse-starlette, uvicorn, the kernel), observed by a Redis subscriber in the bench.")
    add("")
    return lines


def _section_latency(latency: list[Run]) -> list[str]:
    """## 1. Chunk-to-client latency (one client per job)."""
    lines: list[str] = []
    add = lines.append
    add("## 1. Chunk-to-client latency (one client per job)")
    add("")
    add(
        "| job | tokens/s | token events | LM chunks | merged | chunk → client p50 / p99 / max (ms) "
        "| chunk → publish p50 / p99 (ms) | publish → client p50 / p99 (ms) | other load (cores) |"
    )
    add("|---|---|---|---|---|---|---|---|---|")
    for i, run in enumerate(latency, 1):
        m, t, tp, fp = run.matching, run.total, run.to_publish, run.from_publish
        if m is None or t is None or tp is None or fp is None:
            add(f"| {i} | {run.tps:g} | - | - | - | {run.note or 'failed'} | | | |")
            continue
        add(
            f"| {i} | {run.tps:g} | {m.token_events} | {m.chunks} | {m.merged_events} "
            f"| {ms(t.p50)} / {ms(t.p99)} / {ms(t.max)} | {ms(tp.p50)} / {ms(tp.p99)} "
            f"| {ms(fp.p50)} / {ms(fp.p99)} | {max(run.cpu['other'][0], 0.0):.2f} |"
        )
    for tps in sorted({r.tps for r in latency}):
        runs = [r for r in latency if r.tps == tps and r.matching is not None]
        pooled = Dist.of(d for r in runs for d in r.samples)  # every token event of every job at this rate
        if pooled.n:
            add(
                f"| **all at {tps:g}/s** | {tps:g} | {pooled.n} | | | **{ms(pooled.p50)} / {ms(pooled.p99)} / "
                f"{ms(pooled.max)}** | | | |"
            )
    add("")
    matchings = [r.matching for r in latency if r.matching is not None]
    if matchings:
        m0 = matchings[0]
        add(
            f"How tokens were matched to chunks: the LM's completion is the concatenation of its chunks and "
            f"contains a `[[ ## field ## ]]` header before each field. Each field's token events, in order, are "
            f"located one after the other inside that field's part of the completion, and an event is matched to "
            f"the chunk holding its last character (the newest text it carries; it cannot exist before that "
            f"chunk was sent). Per job here: {m0.chunks} chunks, of which {m0.header_chunks} are field headers or "
            f"the blank line before them (DSPy's StreamListener holds back any chunk that could be the start of "
            f"`[[ ## name ## ]]` until it knows, then drops the header; the worker skips the empty chunk it "
            f"yields; ordinary words cannot start a header and are passed on at once); {m0.token_events} token "
            f"events; {sum(m.merged_events for m in matchings)} events over all jobs carried more than one chunk, "
            f"{sum(m.unmatched_events for m in matchings)} could not be placed, "
            f"{sum(m.undelivered_content_chunks for m in matchings)} content chunks reached no client. So each "
            f"token event is exactly one LM chunk, the listener adds no buffering delay for ordinary words, and "
            f"the delays above are the whole path. With merged events the delay of their older chunks would be "
            f"longer than reported; *from the first chunk* covers that case "
            f"(p99 {ms(Dist.of(d for r in latency for d in r.first_samples).p99)} ms here)."
        )
    add("")
    return lines


def _section_fanout(args: argparse.Namespace, fanout: list[Run], hold: list[Run], skipped: list[str]) -> list[str]:
    """## 2. Fan-out: N clients on one job, one API process."""
    lines: list[str] = []
    add = lines.append
    add("## 2. Fan-out: N clients on one job, one API process")
    add("")
    add(
        f"One job per N, streamed at {args.tps:g} tokens/s ({args.words}-word question). *Complete* = the client "
        f"received every event id from 1 to the terminal one without a gap. Delays are over every token delivery "
        f"(N x token events). CPU is in cores (1.0 = one core fully busy), averaged from the first chunk to the "
        f"last client done (*peak* = busiest 1-second window); the machine has {os.cpu_count()} cores and one "
        f"Python process can use at most 1.0. *Other load* = CPU the machine spent outside this benchmark's "
        f"processes (the machine is shared; before each run the bench waits up to {args.quiet_wait_s:g} s for "
        f"that to drop below 0.3 cores). *API µs/delivery* = the API's CPU seconds while streaming / events "
        f"delivered (all clients); *ms/connect* = its CPU while the clients connected / clients; *RSS* = the "
        f"API's resident memory with every client connected (and per connection)."
    )
    add("")
    lines.extend(_fanout_table(fanout))
    add("")
    for run in [r for r in fanout if r.failures or r.connect_failures]:
        add(_incomplete(run))
    for note in skipped:
        add(f"- {note}")
    add("")
    if hold:
        add(
            f"Holding many connections: the same measurement with {hold[0].clients} clients on a short job "
            f"({hold[0].words}-word question, {hold[0].matching.token_events if hold[0].matching else '?'} token "
            f"events), to separate how many connections one process can hold from how many deliveries per second "
            f"it can make."
        )
        add("")
        lines.extend(_fanout_table(hold))
        add("")
        for run in [r for r in hold if r.failures or r.connect_failures]:
            add(_incomplete(run))
        add("")
    add(_fanout_verdict(fanout, hold, args))
    add("")
    return lines


def _section_profile(args: argparse.Namespace, fanout: list[Run], hold: list[Run]) -> list[str]:
    """## 3. Where the API process spends its CPU (py-spy), or why it was not profiled."""
    lines: list[str] = []
    add = lines.append
    profiled = next((r for r in [*fanout, *hold] if r.profile or r.connect_profile), None)
    if profiled is not None:
        add(f"## 3. Where the API process spends its CPU (py-spy, N={profiled.clients})")
        add("")
        mode = "--native" if args.py_spy_native else "--nonblocking"
        add(
            f"`py-spy record --rate 200 --threads {mode}` on the API process, once while the clients connect and "
            f"once from the moment the worker may start to the last client done. Shares are of the samples in "
            f"which the event loop's thread (MainThread) was on CPU. Raw stacks: "
            f"`test-artifacts/sse-bench-api-{{connect,stream}}.pyspy.txt`. Time in C (uvloop's loop, socket "
            f"writes, the garbage collector) is charged to the innermost Python "
            f"frame: `Runner.run` is uvloop's own loop (callbacks, epoll, reads), and a collection triggered by "
            f"an allocation is charged to the frame that allocated (e.g. `_ensure_future`, which creates the "
            f"Task of every `asyncio.wait_for`)."
        )
        add("")
        if profiled.profile is not None:
            prof = profiled.profile
            add(f"While streaming ({prof.samples} samples), inclusive:")
            add("")
            add("| frame | share |")
            add("|---|---|")
            for name, share in prof.inclusive:
                add(f"| {name} | {share:.1f} % |")
            add("")
            add("While streaming, self time (top 15):")
            add("")
            add("| frame | self |")
            add("|---|---|")
            for name, share in prof.self_top[:15]:
                add(f"| `{name}` | {share:.1f} % |")
            add("")
        if profiled.connect_profile is not None:
            prof = profiled.connect_profile
            add(f"While {profiled.clients} clients connect ({prof.samples} samples), inclusive:")
            add("")
            add("| frame | share |")
            add("|---|---|")
            for name, share in prof.inclusive:
                add(f"| {name} | {share:.1f} % |")
            add("")
            add("While connecting, self time (top 12):")
            add("")
            add("| frame | self |")
            add("|---|---|")
            for name, share in prof.self_top[:12]:
                add(f"| `{name}` | {share:.1f} % |")
            add("")

    if profiled is None:
        add("## 3. Where the API process spends its CPU")
        add("")
        add("Not profiled: py-spy was not found. Install it anywhere (`pip install py-spy`) and pass `--py-spy PATH`.")
        add("")
    return lines


def _section_gc(gc_runs: list[Run]) -> list[str]:
    """## 4. Garbage collection in the API process, when compared."""
    lines: list[str] = []
    add = lines.append
    if gc_runs:
        add("## 4. Garbage collection in the API process")
        add("")
        add(
            "The same app and the same job as section 2, but the API started through "
            "`python -m bench.sse_bench --serve-api PORT MODE FILE`, which imports `api.main:app`, times every "
            "collection with `gc.callbacks` and runs it with `uvicorn.run` (same defaults as the CLI). *gc: stats* "
            "changes nothing else; *gc: tuned* adds `gc.freeze()` after the imports and "
            "`gc.set_threshold(50_000, 20, 100)` (default 700, 10, 10). *API GC* = time in collections / the API's "
            "CPU time while streaming."
        )
        add("")
        lines.extend(_fanout_table(gc_runs))
        add("")
    return lines


def report(
    args: argparse.Namespace,
    started: datetime.datetime,
    latency: list[Run],
    fanout: list[Run],
    hold: list[Run],
    gc_runs: list[Run],
    skipped: list[str],
    duration_s: float,
) -> str:
    lines = [
        *_preamble(args, started, duration_s),
        *_section_latency(latency),
        *_section_fanout(args, fanout, hold, skipped),
        *_section_profile(args, fanout, hold),
        *_section_gc(gc_runs),
    ]
    return "\n".join(lines) + "\n"


def _fanout_table(runs: list[Run]) -> list[str]:
    out = [
        "| N | connect all (s) | complete | chunk → client p50 / p99 / max (ms) | ≤ 100 ms | publish → client p99 "
        "(ms) | LM stream / last client done (s) | deliveries/s | API CPU avg / peak | API µs/delivery | API GC "
        "| clients CPU (µs/delivery) | worker / redis CPU | other load | API RSS (MB, per conn) | API ms/connect |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        t, fp = run.total, run.from_publish
        if t is None or fp is None:
            out.append(f"| {run.clients} {run.label} | {run.connect_s:.1f} | {run.complete} | {run.note} |||||||||||||")
            continue
        cpu = run.cpu
        gc_share = _pct(run.api_gc_s / run.api_cpu_s) if run.api_gc_s is not None and run.api_cpu_s else "-"
        per_conn_kb = (run.api_rss_connected_mb - run.api_rss_before_mb) * 1024 / max(run.connected, 1)
        out.append(
            f"| {run.clients} {run.label} | {run.connect_s:.1f} | {run.complete} "
            f"| {ms(t.p50)} / {ms(t.p99)} / {ms(t.max)} | {_pct(t.within)} | {ms(fp.p99)} "
            f"| {run.lm_stream_s:.1f} / {run.last_delivery_s:.1f} "
            f"| {run.deliveries / max(run.last_delivery_s, 1e-9):,.0f} "
            f"| {cpu['api'][0]:.2f} / {cpu['api'][1]:.2f} | {run.api_us_per_delivery:.0f} | {gc_share} "
            f"| {cpu['clients'][0]:.2f} ({run.client_us_per_delivery:.0f}) "
            f"| {cpu['worker'][0]:.2f} / {cpu['redis'][0]:.2f} | {max(cpu['other'][0], 0.0):.2f} "
            f"| {run.api_rss_connected_mb:.0f} ({per_conn_kb:.0f} KB) "
            f"| {run.api_connect_cpu_s / max(run.connected, 1) * 1e3:.1f} |"
        )
    return out


def _fanout_verdict(fanout: list[Run], hold: list[Run], args: argparse.Namespace) -> str:
    good = [
        r for r in fanout if r.total is not None and r.complete == r.clients and r.total.p99 <= WITHIN_S and not r.note
    ]
    measured = [r for r in fanout if r.total is not None]
    if not measured:
        return "No fan-out run produced measurements."
    best = max(good, key=lambda r: r.clients) if good else None
    parts = []
    if best is not None and best.total is not None:
        parts.append(
            f"**Largest N with every client complete and p99 ≤ 100 ms: {best.clients}** "
            f"(p99 {ms(best.total.p99)} ms, API at {best.cpu['api'][0]:.2f} cores)."
        )
    else:
        parts.append("**No N met p99 ≤ 100 ms with every client complete.**")
    first_bad = next((r for r in measured if r not in good), None)
    if first_bad is not None and first_bad.total is not None:
        parts.append(
            f"From N={first_bad.clients} on it does not: p99 {ms(first_bad.total.p99)} ms, the API process at "
            f"{first_bad.cpu['api'][0]:.2f} cores (peak {first_bad.cpu['api'][1]:.2f}), the clients at "
            f"{first_bad.cpu['clients'][0]:.2f} cores ({first_bad.client_us_per_delivery:.0f} µs of client CPU per "
            f"delivery against {first_bad.api_us_per_delivery:.0f} µs in the API), other load "
            f"{first_bad.cpu['other'][0]:.2f} cores."
        )
    every = [*measured, *[r for r in hold if r.total is not None]]
    parts.append(
        "API CPU per delivery by N: "
        + ", ".join(f"{r.clients}: {r.api_us_per_delivery:.0f} µs" for r in sorted(every, key=lambda r: r.clients))
        + " (it grows with N: see sections 3 and 4). Client CPU per delivery stays at "
        + f"{min(r.client_us_per_delivery for r in every):.0f}-{max(r.client_us_per_delivery for r in every):.0f} µs, "
        + "so the API process, not the clients, is what saturates."
    )
    best_rate = max(r.deliveries / max(r.last_delivery_s, 1e-9) for r in measured)
    target = 10_000 * args.tps
    client_us = max(r.client_us_per_delivery for r in every)
    parts.append(
        f"The most deliveries per second seen: {best_rate:,.0f}; at {args.tps:g} tokens/s, 10,000 clients need "
        f"{target:,.0f}/s, i.e. at most {1e6 / target:.0f} µs of API CPU per delivery on one core with no "
        f"headroom. The clients of this benchmark would need {target * client_us / 1e6:.1f} cores for that rate "
        f"({client_us:.0f} µs each): on a {os.cpu_count()}-core machine the goal cannot be measured even with a "
        f"perfect server, but at the rates reached here the clients used at most "
        f"{max(r.cpu['clients'][0] for r in every):.2f} cores and were not the limit."
    )
    for run in hold:
        if run.total is not None:
            parts.append(
                f"Holding {run.clients} connections: {run.connected} connected in {run.connect_s:.0f} s, "
                f"{run.complete} complete, API RSS {run.api_rss_connected_mb:.0f} MB, p99 {ms(run.total.p99)} ms."
            )
    other = sum(r.cpu["other"][0] for r in every) / len(every)
    if other > 0.3:
        small = min(every, key=lambda r: r.clients)
        parts.append(
            f"\n\n**Caveat: the machine was shared.** Other processes used {other:.2f} cores on average while "
            f"the fan-out runs streamed (column *other load*), so the API process, which can use at most one core, "
            f"often got less than that, and the wall-clock delays above are pessimistic. The CPU cost per delivery "
            f"is much less affected: at {small.api_us_per_delivery:.0f} µs (N={small.clients}) one whole core "
            f"makes {1e6 / small.api_us_per_delivery:,.0f} deliveries/s, enough for about "
            f"{1e6 / small.api_us_per_delivery / args.tps:,.0f} clients at {args.tps:g} tokens/s at 100 % CPU, "
            f"fewer as the cost per delivery grows with N."
        )
    return " ".join(parts)
