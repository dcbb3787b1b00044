"""What `GET /metrics` (api/routes/metrics.py) serves: the whole service, from one scrape target.

Three sources, merged into one answer:

- **This API process** (prometheus-client's own registry): submissions by
  program and key name, requests refused (401, 429), open event streams.
  With several API processes (`uvicorn --workers N`), set
  `PROMETHEUS_MULTIPROC_DIR` and each process writes its values to files
  there that every scrape adds up, whichever process answers it.
- **The workers**, through Redis (core/metrics.py): jobs finished by program
  and status, queue-wait and run-time histograms, LM tokens, retries.
- **Redis, read at scrape time**: queue depth per queue, jobs in flight
  (held leases), workers online per queue (heartbeats) and the state of
  their webhook senders, batches by status,
  and each model's LM capacity (api/lm_capacity.py): calls in flight, its
  limit, who waits (by priority), whether it is paused, its 429s and pauses.

If Redis does not answer, the API's own metrics are still served, with
`dspy_jobs_redis_up 0`.
"""

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import redis.asyncio as aioredis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from api.lm_capacity import ModelCapacity, bulk_waiting, read_capacity
from api.webhook_senders import sender_states
from core import keys
from core.batches import TERMINAL_BATCH_STATUSES, BatchStatus
from core.metrics import (
    BATCHES_FINISHED,
    COUNTERS,
    HISTOGRAMS,
    HistogramSeries,
    Series,
    counter_field,
    parse_counters,
    parse_histograms,
)
from core.settings import Settings

log = logging.getLogger(__name__)

JOBS_SUBMITTED = Counter(
    "dspy_jobs_submitted", "Jobs accepted by POST /jobs, by program and API key name.", ["program", "key"]
)
BATCHES_SUBMITTED = Counter(
    "dspy_jobs_batches_submitted", "Batches accepted by POST /batches, by API key name.", ["key"]
)
REQUESTS_REFUSED = Counter(
    "dspy_jobs_requests_refused",
    "Requests refused before doing any work: missing or invalid API key (401), over a per-key limit (429).",
    ["reason"],
)
# livesum: with several processes, the streams of the processes alive now.
SSE_STREAMS_OPEN = Gauge(
    "dspy_jobs_sse_streams_open", "Event streams this API serves right now.", ["kind"], multiprocess_mode="livesum"
)
LONG_POLLS_OPEN = Gauge(
    "dspy_jobs_long_polls_open",
    "Requests this API holds while they wait for a job to end.",
    ["kind"],
    multiprocess_mode="livesum",
)

# Batch record field set once a scrape has counted the batch as finished.
_BATCH_COUNTED = "metrics_counted"


@dataclass
class Snapshot:
    """What a scrape read from Redis."""

    redis_up: bool = False
    queue_depth: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    workers: dict[str, int] = field(default_factory=dict)
    open_batches: dict[str, int] = field(default_factory=dict)
    counters: dict[str, list[Series]] = field(default_factory=dict)
    histograms: dict[str, list[HistogramSeries]] = field(default_factory=dict)
    models: list[ModelCapacity] = field(default_factory=list)
    webhook_senders: dict[str, int] = field(default_factory=dict)
    redis_memory_bytes: int = 0
    redis_memory_limit_bytes: int | None = None


async def _sweep_batches(redis: aioredis.Redis, settings: Settings) -> dict[str, int]:
    """Open batches by status; those that finished since the last scrape are counted once and forgotten."""
    now = time.time()
    await redis.zremrangebyscore(keys.OPEN_BATCHES, "-inf", now - settings.job_ttl_s)
    batch_ids = cast(list[str], await redis.zrange(keys.OPEN_BATCHES, 0, -1))
    async with redis.pipeline(transaction=False) as pipe:
        for batch_id in batch_ids:
            pipe.hget(keys.batch(batch_id), "status")
        statuses = cast(list[str | None], await pipe.execute())
    by_status = {status.value: 0 for status in BatchStatus if status not in TERMINAL_BATCH_STATUSES}
    for batch_id, status in zip(batch_ids, statuses, strict=True):
        if status is None:  # expired
            await redis.zrem(keys.OPEN_BATCHES, batch_id)
        elif BatchStatus(status) in TERMINAL_BATCH_STATUSES:
            if await redis.hsetnx(keys.batch(batch_id), _BATCH_COUNTED, "1"):
                await redis.hincrby(keys.METRICS_COUNTERS, counter_field(BATCHES_FINISHED, {"status": status}), 1)
            await redis.zrem(keys.OPEN_BATCHES, batch_id)
        else:
            by_status[status] = by_status.get(status, 0) + 1
    return by_status


async def read_snapshot(redis: aioredis.Redis, settings: Settings) -> Snapshot:
    snapshot = Snapshot()
    queues = [settings.interactive_queue, settings.bulk_queue]
    try:
        open_batches = await _sweep_batches(redis, settings)
        since = time.time() - settings.worker_offline_after_s
        async with redis.pipeline(transaction=False) as pipe:
            pipe.llen(settings.interactive_queue)
            pipe.zcard(keys.LEASES)
            pipe.zrangebyscore(keys.WORKERS, since, "+inf")
            pipe.hgetall(keys.METRICS_COUNTERS)
            pipe.hgetall(keys.METRICS_HISTOGRAMS)
            interactive_depth, in_flight, workers, counters, histograms = await pipe.execute()
        async with redis.pipeline(transaction=False) as pipe:
            for name in workers:
                pipe.hget(keys.worker(name), "queues")
            worker_queues = cast(list[str | None], await pipe.execute())
        waiting_items = await bulk_waiting(redis, settings)
        snapshot.models = await read_capacity(redis, settings, waiting_items)
        senders = await sender_states(redis, settings, workers)
        memory = await redis.info("memory")
    except RedisError as e:
        log.warning("/metrics: Redis does not answer (%s); serving this process's metrics only", e)
        return snapshot
    snapshot.redis_up = True
    snapshot.redis_memory_bytes = int(memory.get("used_memory") or 0)
    snapshot.redis_memory_limit_bytes = int(memory.get("maxmemory") or 0) or settings.redis_memory_limit_bytes
    # Batch items wait as inputs of their batch, not as messages (worker/bulk.py): the bulk queue's depth is them.
    snapshot.queue_depth = {
        settings.interactive_queue: int(interactive_depth),
        settings.bulk_queue: sum(waiting_items.values()),
    }
    snapshot.in_flight = int(in_flight)
    snapshot.workers = dict.fromkeys(queues, 0)
    for listed in worker_queues:
        for queue in (listed or "").split(","):
            if queue:
                snapshot.workers[queue] = snapshot.workers.get(queue, 0) + 1
    snapshot.open_batches = open_batches
    snapshot.webhook_senders = {status: 0 for status in ("ok", "stalled", "off")}
    for state in senders.values():
        snapshot.webhook_senders[state["status"]] += 1
    snapshot.counters = parse_counters(counters)
    snapshot.histograms = parse_histograms(histograms)
    return snapshot


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self._s = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._s
        up = GaugeMetricFamily("dspy_jobs_redis_up", "1 when Redis answered this scrape.")
        up.add_metric([], 1.0 if s.redis_up else 0.0)
        yield up
        if not s.redis_up:
            return
        depth = GaugeMetricFamily(
            "dspy_jobs_queue_depth",
            "Work waiting in each queue: interactive messages not yet taken, batch items not yet started.",
            labels=["queue"],
        )
        for queue, n in s.queue_depth.items():
            depth.add_metric([queue], n)
        yield depth
        yield GaugeMetricFamily("dspy_jobs_in_flight", "Jobs a worker is running now (held leases).", value=s.in_flight)
        workers = GaugeMetricFamily(
            "dspy_jobs_workers_online", "Workers with a recent heartbeat, by queue they consume.", labels=["queue"]
        )
        for queue, n in s.workers.items():
            workers.add_metric([queue], n)
        yield workers
        batches = GaugeMetricFamily("dspy_jobs_batches_open", "Batches not finished yet, by status.", labels=["status"])
        for status, n in s.open_batches.items():
            batches.add_metric([status], n)
        yield batches
        senders = GaugeMetricFamily(
            "dspy_jobs_webhook_senders",
            "Online workers by the state of their webhook sender: ok, stalled (its loop has not gone round "
            "within WORKER_OFFLINE_AFTER_S) or off (no WEBHOOK_SECRET).",
            labels=["status"],
        )
        for status, n in s.webhook_senders.items():
            senders.add_metric([status], n)
        yield senders
        yield from _model_metrics(s.models)
        yield GaugeMetricFamily("dspy_jobs_redis_memory_bytes", "Memory Redis uses.", value=s.redis_memory_bytes)
        if s.redis_memory_limit_bytes is not None:
            yield GaugeMetricFamily(
                "dspy_jobs_redis_memory_limit_bytes",
                "Redis' memory limit (maxmemory, or REDIS_MEMORY_LIMIT_BYTES); above REDIS_HIGH_WATER of it the API "
                "refuses new submissions.",
                value=s.redis_memory_limit_bytes,
            )
        for name, spec in COUNTERS.items():
            counter = CounterMetricFamily(name, spec.help, labels=list(spec.labels))
            for series in s.counters.get(name, []):
                counter.add_metric([series.labels.get(label, "") for label in spec.labels], series.value)
            yield counter
        for name, spec in HISTOGRAMS.items():
            histogram = HistogramMetricFamily(name, spec.help, labels=list(spec.labels))
            for hseries in s.histograms.get(name, []):
                cumulative, buckets = 0.0, []
                for bound, count in zip([*map(str, spec.buckets), "+Inf"], hseries.buckets, strict=True):
                    cumulative += count
                    buckets.append((bound, cumulative))
                histogram.add_metric([hseries.labels.get(label, "") for label in spec.labels], buckets, hseries.sum)
            yield histogram


def _model_metrics(models: list[ModelCapacity]) -> Iterator[Metric]:
    in_flight = GaugeMetricFamily("dspy_jobs_lm_in_flight", "LM calls in flight now, by model.", labels=["model"])
    limit = GaugeMetricFamily(
        "dspy_jobs_lm_max_in_flight", "LM calls a model's endpoint may have in flight at once.", labels=["model"]
    )
    waiting = GaugeMetricFamily(
        "dspy_jobs_lm_waiting",
        "Work waiting for a model's capacity: interactive jobs a worker holds, batch items not started.",
        labels=["model", "priority"],
    )
    paused = GaugeMetricFamily("dspy_jobs_lm_paused", "1 while a model is paused for every worker.", labels=["model"])
    rate_limited = CounterMetricFamily(
        "dspy_jobs_lm_rate_limited", "LM calls answered with 429, by model.", labels=["model"]
    )
    failures = CounterMetricFamily(
        "dspy_jobs_lm_failures",
        "LM calls that failed for the endpoint's sake (5xx, timeouts, connections).",
        labels=["model"],
    )
    pauses = CounterMetricFamily("dspy_jobs_lm_pauses", "Times a model was paused for every worker.", labels=["model"])
    for m in models:
        in_flight.add_metric([m.model], m.in_flight)
        limit.add_metric([m.model], m.limits.max_in_flight)
        waiting.add_metric([m.model, "interactive"], m.waiting.interactive)
        waiting.add_metric([m.model, "bulk"], m.waiting.bulk)
        paused.add_metric([m.model], 1.0 if m.paused_until else 0.0)
        rate_limited.add_metric([m.model], m.rate_limited_total)
        failures.add_metric([m.model], m.failures_total)
        pauses.add_metric([m.model], m.pauses_total)
    yield from (in_flight, limit, waiting, paused, rate_limited, failures, pauses)


def process_metrics(settings: Settings) -> bytes:
    """This process's metrics, or every API process's when they share a multiprocess directory."""
    if settings.prometheus_multiproc_dir:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=settings.prometheus_multiproc_dir)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def on_process_exit(settings: Settings) -> None:
    """A stopped process's live gauges must stop counting (multiprocess mode only)."""
    if settings.prometheus_multiproc_dir:
        mark_process_dead(os.getpid(), settings.prometheus_multiproc_dir)
