"""The report's sections of scenarios 3 (in-flight capacity, SSE memory), 4 (time to first token) and
the py-spy profile."""

from bench.report import ROOT, mib, ms, table
from bench.scenarios.results import Results


def _capacity_part(res: Results) -> list[str]:
    """Scenario 3, LM calls in flight: the measures of one worker process."""
    args = res.args
    lines: list[str] = []
    add = lines.append
    if res.capacity:
        c = res.capacity
        add(
            f"LM: {c.lm_timing}. {c.jobs} jobs submitted at once (`POST /jobs`, 50 connections, "
            f"{c.submit_s:.1f} s to submit); one worker, `-c {args.concurrency}`. *In flight* = LM requests "
            f"received and not yet fully answered, from the simulator's own records (received → last chunk); "
            f"also sampled every 0.1 s: jobs holding a lease (`running`) and the worker's established connections "
            f"to the LM."
        )
        add("")
        lines += table(
            ["measure", "value"],
            [
                [
                    "LM calls in flight at once (max)",
                    f"**{c.max_in_flight_lm}** ({c.max_in_flight_at_s:.1f} s after the first submit)",
                ],
                ["jobs running at once (leases, max sampled)", c.max_leased],
                ["worker → LM connections (max sampled)", c.max_sockets],
                [
                    "jobs succeeded",
                    f"{c.succeeded} / {c.submitted} ({dict(c.not_succeeded) or 'all'}), "
                    f"all done after {c.all_done_s:.1f} s",
                ],
                [
                    "worker CPU for the whole batch",
                    f"{c.worker_cpu_s:.1f} s ({c.worker_cpu_s / max(c.succeeded, 1) * 1000:.1f} ms per job)",
                ],
                [
                    "worker RSS: just started / idle before this scenario / peak",
                    f"{mib(res.idle_rss.get('worker', 0))} / {mib(c.worker_rss_idle)} / {mib(c.worker_rss_peak)} MiB",
                ],
                ["worker threads: idle / peak", f"{c.worker_threads_idle} / {c.worker_threads_peak}"],
                [
                    "CPU with nothing submitted (5 s after start): API / worker / redis / baseline",
                    " / ".join(
                        f"{res.idle_cores.get(k, float('nan')):.3f}" for k in ("api", "worker", "redis", "baseline")
                    )
                    + " cores",
                ],
            ],
        )
        add("")
    return lines


def _sse_part(res: Results) -> list[str]:
    """Scenario 3, open SSE streams: the API's memory."""
    lines: list[str] = []
    add = lines.append
    if res.sse:
        s = res.sse
        per_stream = (s.api_rss_open - s.api_rss_before) / max(s.opened, 1)
        add(
            f"API memory with {s.streams} open SSE streams: the worker stops consuming (Celery `cancel_consumer`), "
            f"{s.jobs_submitted} jobs are submitted (they stay `queued`), one `GET /jobs/{{id}}/events` per job "
            f"is opened (at most 100 connecting at once) and counts as open once its first event (`queued`) "
            f"arrives; then every job is cancelled, which ends each stream with its terminal event."
        )
        add("")
        lines += table(
            ["measure", "value"],
            [
                ["streams open (first event received)", f"{s.opened} / {s.streams} in {s.open_s:.1f} s"],
                [
                    "API RSS: just started / before the streams / with them open / after they ended",
                    f"{mib(res.idle_rss.get('api', 0))} / {mib(s.api_rss_before)} / **{mib(s.api_rss_open)}** / "
                    f"{mib(s.api_rss_after)} MiB",
                ],
                ["API memory per open stream", f"{per_stream / 1024:.0f} KiB"],
                [
                    "API CPU to open them",
                    f"{s.api_cpu_open_s:.2f} s ({s.api_cpu_open_s / max(s.opened, 1) * 1e6:.0f} µs per stream)",
                ],
                [
                    "streams ended with the terminal event after the cancel",
                    f"{s.ended_terminal} / {s.opened}; other endings: {dict(s.stream_failures) or 'none'}",
                ],
                ["baseline RSS (just started)", f"{mib(res.idle_rss.get('baseline', 0))} MiB"],
            ],
        )
        add("")
    return lines


def section_in_flight(res: Results) -> list[str]:
    """## 3. In-flight capacity and memory."""
    lines = ["## 3. In-flight capacity and memory", "", *_capacity_part(res), *_sse_part(res)]
    if not res.capacity and not res.sse:
        lines += ["Not run.", ""]
    return lines


def section_ttft(res: Results) -> list[str]:
    """## 4. Time to first token through SSE."""
    lines: list[str] = []
    add = lines.append
    add("## 4. Time to first token through SSE")
    add("")
    if res.ttft:
        t = res.ttft
        add(
            f"LM: {t.lm_timing}. {t.clients} closed-loop clients for {t.duration_s:g} s, each: `POST /jobs`, then "
            f"`GET /jobs/{{id}}/events` until the result. Client TTFT = submit → first `token` event received. "
            f"The LM's own TTFT = request received → first chunk of field text (after the `[[ ## reasoning ## ]]` "
            f"header, which the listener holds back), from the simulator's records. {t.jobs} jobs; failures: "
            f"{dict(t.failures) or 'none'}. The baseline cannot stream: its first byte of answer comes with the "
            f"whole answer (section 1)."
        )
        add("")
        lines += table(
            ["", "p50 (ms)", "p99 (ms)", "max (ms)"],
            [
                ["client TTFT (submit → first token event)", ms(t.client.p50), ms(t.client.p99), ms(t.client.max)],
                ["LM's own TTFT (measured)", ms(t.lm.p50), ms(t.lm.p99), ms(t.lm.max)],
                [
                    "**added: client TTFT - LM's own TTFT**",
                    f"**{ms(t.added.p50)}**",
                    f"**{ms(t.added.p99)}**",
                    ms(t.added.max),
                ],
                [
                    f"client TTFT - configured ttft ({t.lm_timing.ttft_s * 1000:.0f} ms)",
                    ms(t.added_configured.p50),
                    ms(t.added_configured.p99),
                    ms(t.added_configured.max),
                ],
                ["of which: submit → LM has the request", ms(t.to_lm.p50), ms(t.to_lm.p99), ms(t.to_lm.max)],
                [
                    "of which: first content chunk → client",
                    ms(t.chunk_to_client.p50),
                    ms(t.chunk_to_client.p99),
                    ms(t.chunk_to_client.max),
                ],
            ],
        )
    else:
        add("Not run.")
    add("")
    return lines


def section_profiles(res: Results) -> list[str]:
    """## 5. Where ours spends its CPU (py-spy), when profiled."""
    lines: list[str] = []
    add = lines.append
    if res.profiles:
        add("## 5. Where ours spends its CPU (py-spy)")
        add("")
        add(
            "`py-spy record --gil --nonblocking --rate 100` on the worker and the API during a closed-loop run "
            "(throughput is lower under the profiler): under scenario 2's load (LM answers at once, so a job's "
            "chunks arrive together), and under scenario 1's LM (chunks spread over a second, one by one). "
            "`--gil` takes the stack of the thread holding the GIL; "
            "when no thread holds it py-spy still reports the last holder, then blocked in a call that released it "
            "(`select`, a socket `recv`, a lock or queue wait): those idle samples are dropped, so the shares are "
            "of Python work. *ms per job* = share x the process's CPU seconds per job (from /proc) in that window, "
            "an approximation: /proc also counts CPU spent outside the GIL (system calls, C code). Raw stacks: "
            + ", ".join(f"`{p.raw_path.relative_to(ROOT)}`" for p in res.profiles)
            + "."
        )
        add("")
        for p in res.profiles:
            add(
                f"### {p.process}, {p.label}: {p.cpu_per_job_s * 1000:.2f} ms CPU per job ({p.jobs} jobs; "
                f"{p.samples} samples of work, {p.idle_samples} idle ones dropped)"
            )
            add("")
            add("Each sample in one bucket (the first listed bucket with a matching frame anywhere in its stack):")
            add("")
            lines += table(
                ["where", "share", "≈ ms per job"],
                [[k, f"{v:.1f} %", f"{v / 100 * p.cpu_per_job_s * 1000:.2f}"] for k, v in p.categories],
            )
            add("")
            add("Top inclusive frames (the frame and everything it calls):")
            add("")
            lines += table(
                ["frame", "share", "≈ ms per job"],
                [[f"`{k}`", f"{v:.1f} %", f"{v / 100 * p.cpu_per_job_s * 1000:.2f}"] for k, v in p.inclusive_top[:12]],
            )
            add("")
            add("Top self time (innermost Python frame):")
            add("")
            lines += table(["frame", "share"], [[f"`{k}`", f"{v:.1f} %"] for k, v in p.self_top[:10]])
            add("")
    return lines
