"""Scenario 4: time to first token through SSE, against the LM's own."""

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

from bench import load
from bench.report import Dist, ms
from bench.scenarios.common import LMTiming, log
from bench.scenarios.stack import Stack


@dataclass
class Ttft:
    clients: int
    duration_s: float
    lm_timing: LMTiming
    jobs: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    client: Dist = field(default_factory=lambda: Dist.of([]))  # submit -> first token event at the client
    lm: Dist = field(default_factory=lambda: Dist.of([]))  # LM received the request -> first content chunk
    added: Dist = field(default_factory=lambda: Dist.of([]))  # client minus lm, per job
    added_configured: Dist = field(default_factory=lambda: Dist.of([]))  # client minus the configured ttft
    to_lm: Dist = field(default_factory=lambda: Dist.of([]))  # submit -> LM received the request
    chunk_to_client: Dist = field(default_factory=lambda: Dist.of([]))  # first content chunk -> client


def first_content_chunk(texts: list[str]) -> int | None:
    """Index of the first chunk of field text: after the first `[[ ## field ## ]]` header."""
    header_done = False
    for i, text in enumerate(texts):
        if header_done and text.strip():
            return i
        if "]]" in text:
            header_done = True
    return None


async def time_to_first_token(stack: Stack, clients: int, duration_s: float) -> Ttft:
    result = Ttft(clients, duration_s, stack.lm_timing)
    stack.clear_lm()
    samples: list[tuple[str, float, load.Stream]] = []
    stop_at = time.time() + duration_s

    async def user() -> None:
        conn = load.Connection("127.0.0.1", stack.api_port)
        try:
            while time.time() < stop_at:
                question = load.new_question()
                start = time.time()
                status, body = await conn.request("POST", "/jobs", json.dumps({"question": question}).encode())
                if status != 202:
                    result.failures[f"submit HTTP {status}"] += 1
                    continue
                stream = load.Stream(json.loads(body)["id"])
                await load.follow_events("127.0.0.1", stack.api_port, stream, None, 60.0)
                samples.append((question, start, stream))
        finally:
            conn.close()

    await asyncio.gather(*(user() for _ in range(clients)))
    lm = stack.lm_requests()
    client, lm_ttft, added, added_conf, to_lm, chunk_to_client = [], [], [], [], [], []
    for question, start, stream in samples:
        if stream.terminal != "result" or not stream.first_token_t:
            result.failures[f"stream: {stream.terminal or 'no token event'}"] += 1
            continue
        result.jobs += 1
        observed = stream.first_token_t - start
        client.append(observed)
        added_conf.append(observed - stack.lm_timing.ttft_s)
        entry = lm.get(question)
        index = first_content_chunk(entry["chunk_texts"]) if entry else None
        if entry is None or index is None:
            result.failures["no LM record"] += 1
            continue
        chunk_t = entry["chunk_times"][index]
        lm_ttft.append(chunk_t - entry["at"])
        added.append(observed - (chunk_t - entry["at"]))
        to_lm.append(entry["at"] - start)
        chunk_to_client.append(stream.first_token_t - chunk_t)
    result.client, result.lm, result.added = Dist.of(client), Dist.of(lm_ttft), Dist.of(added)
    result.added_configured, result.to_lm = Dist.of(added_conf), Dist.of(to_lm)
    result.chunk_to_client = Dist.of(chunk_to_client)
    stack.clear_lm()
    log(
        f"TTFT: {result.jobs} jobs, client p50 {ms(result.client.p50)} p99 {ms(result.client.p99)} ms, "
        f"added p50 {ms(result.added.p50)} p99 {ms(result.added.p99)} ms"
    )
    return result
