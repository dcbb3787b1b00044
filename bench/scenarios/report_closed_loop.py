"""The report's sections of scenarios 1 and 2 (closed loop), and their tables."""

from bench.report import ms, ratio, table
from bench.scenarios.closed_loop import LoopResult
from bench.scenarios.common import BASE, OURS, OURS_STREAMING
from bench.scenarios.results import Results, cpu_ratio, find_run


def _label(r: LoopResult) -> str:
    if r.system == BASE:
        return BASE
    return f"{r.system} ({r.events_per_job:.0f} events/job)"


def _failures(r: LoopResult) -> str:
    parts = [f"{n} {why}" for why, n in r.run.failures.most_common()]
    if r.run.unfinished:
        parts.append(f"{r.run.unfinished} still open at the end (abandoned)")
    return "; ".join(parts) or "none"


def _loop_table(results: list[LoopResult], realistic: bool) -> list[str]:
    header = [
        "clients",
        "system",
        "completed jobs/s",
        "e2e p50 / p99 (ms)",
        "LM's own time p50 (ms)",
        "added p50 / p99 (ms)",
        "errors / timeouts",
        "LM calls in flight (max)",
        "CPU: system / LM sim / client (cores)",
        "other load (cores)",
    ]
    if realistic:
        header.insert(6, "system CPU per job (ms)")
    else:
        header[4:6] = ["system CPU per job"]
        header.remove("LM calls in flight (max)")
    rows = []
    for r in results:
        cpu = r.cpu
        system_cores = r.system_cpu_s / max(cpu.wall_s, 1e-9)
        row: list[object] = [
            r.run.clients,
            _label(r),
            f"{r.run.throughput:.1f}",
            f"{ms(r.e2e.p50)} / {ms(r.e2e.p99)}",
        ]
        if realistic:
            row += [ms(r.lm_time.p50), f"{ms(r.added.p50)} / {ms(r.added.p99)}", f"{r.cpu_per_job_s * 1000:.1f}"]
        else:
            row += [f"{r.cpu_per_job_s * 1000:.2f} ms"]
        row += [_failures(r), *([r.max_lm_in_flight] if realistic else [])]
        row += [
            f"{system_cores:.2f} / {cpu.cores('lm'):.2f} / {cpu.cores('client'):.2f}",
            f"{cpu.cores('other'):.2f}",
        ]
        rows.append(row)
    return table(header, rows)


def _ratio_table(results: list[LoopResult], cpu: bool = False) -> list[str]:
    rows = []
    for clients in sorted({r.run.clients for r in results}):
        base = find_run(results, BASE, clients)
        for system in (OURS, OURS_STREAMING):
            ours = find_run(results, system, clients)
            if not ours or not base:
                continue
            rows.append(
                [
                    clients,
                    system,
                    ratio(ours.run.throughput, base.run.throughput),
                    f"{ratio(ours.e2e.p50, base.e2e.p50)} / {ratio(ours.e2e.p99, base.e2e.p99)}",
                    ratio(ours.cpu_per_job_s, base.cpu_per_job_s)
                    if cpu
                    else f"{ratio(ours.added.p50, base.added.p50)} / {ratio(ours.added.p99, base.added.p99)}",
                ]
            )
    last = "CPU per job" if cpu else "added p50 / p99"
    return table(["clients", "ours", "throughput", "e2e p50 / p99", last], rows)


def _breakdown_table(results: list[LoopResult]) -> list[str]:
    rows = []
    for r in results:
        if r.system == BASE:
            continue
        rows.append(
            [
                f"{r.run.clients} ({r.system})",
                f"{ms(r.to_lm.p50)} / {ms(r.to_lm.p99)}",
                f"{ms(r.queue_wait.p50)} / {ms(r.queue_wait.p99)}",
                f"{ms(r.start_to_lm.p50)} / {ms(r.start_to_lm.p99)}",
                f"{ms(r.lm_time.p50)} / {ms(r.lm_time.p99)}",
                f"{ms(r.from_lm.p50)} / {ms(r.from_lm.p99)}",
            ]
        )
    for r in results:
        if r.system != BASE:
            continue
        rows.append(
            [
                f"{r.run.clients} (baseline)",
                f"{ms(r.to_lm.p50)} / {ms(r.to_lm.p99)}",
                "-",
                "-",
                f"{ms(r.lm_time.p50)} (configured)",
                f"{ms(r.from_lm.p50)} / {ms(r.from_lm.p99)}",
            ]
        )
    return table(
        [
            "clients",
            "submit → LM has the request p50 / p99 (ms)",
            "of which queued (created → started) p50 / p99",
            "of which started → LM has the request p50 / p99",
            "LM's own time p50 / p99",
            "LM's last chunk → client has the answer p50 / p99",
        ],
        rows,
    )


def section_realistic(res: Results) -> list[str]:
    """## 1. Overhead at realistic LM latency."""
    args = res.args
    lines: list[str] = []
    add = lines.append
    add("## 1. Overhead at realistic LM latency")
    add("")
    realistic_timing = res.realistic[0].lm_timing if res.realistic else None
    if realistic_timing:
        add(
            f"LM: {realistic_timing}: {res.chunks} chunks, configured "
            f"{realistic_timing.answer_s(res.chunks) * 1000:.0f} ms per answer. Closed loop, "
            f"{args.warmup_s:g} s warm-up then {args.duration_s:g} s measured per run; a request counts when it "
            f"ends inside the measured window. When the window closes clients stop submitting; requests still "
            f"open get {args.drain_s:g} s, then are abandoned (reported)."
        )
        add("")
        lines += _loop_table(res.realistic, realistic=True)
        add("")
        add("Ours / baseline:")
        add("")
        lines += _ratio_table(res.realistic)
        add("")
        add("Where ours spends the time (per request, from the simulator's clock and the job's own timestamps):")
        add("")
        lines += _breakdown_table(res.realistic)
        add("")
        for r in res.realistic:
            if r.settle_note:
                add(f"- {r.system} x{r.run.clients}: {r.settle_note}")
            if r.unmatched:
                add(f"- {r.system} x{r.run.clients}: {r.unmatched} completed requests had no LM record")
        add("")
    return lines


def section_overhead(res: Results) -> list[str]:
    """## 2. Pure overhead (LM answers at once)."""
    args = res.args
    lines: list[str] = []
    add = lines.append
    add("## 2. Pure overhead (LM answers at once)")
    add("")
    if res.overhead:
        add(
            f"LM: {res.overhead[0].lm_timing}. {res.overhead[0].run.clients} closed-loop clients, "
            f"{args.warmup_s:g} s warm-up, {args.overhead_duration_s:g} s measured. *CPU-s per job* = CPU seconds "
            "of every process of the system (ours: API + worker + redis-server; baseline: its one process) during "
            "the window (`/proc/<pid>/stat` utime + stime) / jobs completed in it. "
            f"{len(res.overhead_rounds)} round(s), each running the three systems in turn; the machine's speed "
            "drifts between rounds by more than these systems differ, so each round's ratio is its own, and the "
            "tables after this one show the round with the median ours / baseline CPU ratio."
        )
        add("")
        lines += table(
            ["round", "ours: CPU per job (ms)", "ours, streaming", "baseline", "ours / baseline", "streaming / base"],
            [
                [
                    f"{i + 1}{' (median)' if rnd is res.overhead else ''}",
                    *(f"{r.cpu_per_job_s * 1000:.2f}" for r in rnd),
                    f"{cpu_ratio(rnd):.2f}",
                    f"{cpu_ratio(rnd, OURS_STREAMING):.2f}",
                ]
                for i, rnd in enumerate(res.overhead_rounds)
            ],
        )
        add("")
        lines += _loop_table(res.overhead, realistic=False)
        add("")
        rows = []
        for r in res.overhead:
            per = {k: v / r.completed * 1000 if r.completed else float("nan") for k, v in r.cpu.roles.items()}
            rows.append(
                [r.system, *(f"{per.get(k, float('nan')):.2f}" for k in ("api", "worker", "redis", "baseline"))]
            )
            rows[-1] += [f"{per['lm']:.2f}", f"{per['client']:.2f}", f"{r.redis_commands_per_job:.1f}"]
        lines += table(
            ["CPU ms per job", "API", "worker", "redis", "baseline", "LM sim", "client", "Redis commands per job"],
            [[c.replace("nan", "-") for c in row] for row in rows],
        )
        add("")
        add("Ours / baseline:")
        add("")
        lines += _ratio_table(res.overhead, cpu=True)
    else:
        add("Not run.")
    add("")
    return lines
