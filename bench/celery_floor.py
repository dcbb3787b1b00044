"""What Celery alone costs per message in our configuration: a task that does nothing.

    .venv/bin/python -m bench.celery_floor [--messages 30000] [--concurrency 256]

The pure-overhead target of BENCHMARKS.md compares whole CPU per job with a
baseline that runs the program in the request. Part of ours is Celery taking
a message off Redis and acknowledging it, whatever the task does; this
measures that part by itself, for the settings that change it:

- kombu's ack emulation (`BROKER_ACK_EMULATION`, core/queue.py): each message
  taken is also written to kombu's `unacked` hash and index, and removed
  again at the ack, two more Redis round trips per message;
- Celery's task events (`TASK_EVENTS`): three per task for Flower.

For each combination it starts a private redis-server, fills the interactive
queue with `--messages` task messages (sent through Celery, as the batch
expansion sends them), starts one worker of this module's app (our
`make_celery` app, the task-event flusher of patches/celery_task_events.py, a task
that returns at once; `-P threads -c --concurrency`), and measures the
worker's and redis-server's CPU (/proc) while the worker drains the middle
of the queue: from when a tenth of the messages are gone to when a tenth
are left, divided by the messages taken meanwhile (with prefetch bounded by
the pool, taken is run). Writes `bench/results/celery_floor.md`.
"""

import argparse
import time
from pathlib import Path

import redis
from celery import signals

import patches
from bench.report import command_line, git_state, machine, proc_cpu_s, table, versions
from core.queue import make_celery
from core.settings import get_settings
from harness.processes import Proc, start_redis, wait_for, worker_command

RESULTS = Path(__file__).parent / "results"
NOOP_TASK = "bench.noop"

app = make_celery(get_settings())


@signals.celeryd_after_setup.connect
def _install(**_: object) -> None:
    # As the service's worker does.
    patches.install((patches.KOMBU_CLIENTS, patches.CELERY_TASK_EVENTS), get_settings())


@app.task(name=NOOP_TASK)
def noop(_: str) -> None:
    """Nothing: what is measured is Celery's own work around it."""


def measure(messages: int, concurrency: int, ack_emulation: bool, task_events: bool) -> dict[str, float]:
    redis_proc, url = start_redis("floor-redis")
    env = {
        "REDIS_URL": url,
        "BROKER_ACK_EMULATION": "on" if ack_emulation else "off",
        "TASK_EVENTS": str(task_events).lower(),
    }
    settings = get_settings().model_copy(update={"redis_url": url})
    sender = make_celery(settings)
    queue = settings.interactive_queue
    client = redis.Redis.from_url(url)
    worker: Proc | None = None
    try:
        with sender.producer_or_acquire() as producer:
            for i in range(messages):
                sender.send_task(NOOP_TASK, args=[str(i)], queue=queue, producer=producer)
        command = worker_command("bench.celery_floor", queue, concurrency, "floor@bench", loglevel="WARNING")
        worker = Proc("floor-worker", command, env)
        start_at, stop_at = messages * 9 // 10, messages // 10
        wait_for(lambda: client.llen(queue) <= start_at, 60, "the worker to start consuming", worker)
        left_0, worker_0, redis_0, t_0 = client.llen(queue), proc_cpu_s(worker.pid), _cpu(redis_proc), time.monotonic()
        wait_for(lambda: client.llen(queue) <= stop_at, 600, "the worker to drain the queue", worker)
        left_1, worker_1, redis_1, t_1 = client.llen(queue), proc_cpu_s(worker.pid), _cpu(redis_proc), time.monotonic()
        taken = left_0 - left_1
        return {
            "taken": taken,
            "per_s": taken / (t_1 - t_0),
            "worker_ms": 1000 * (worker_1 - worker_0) / taken,
            "redis_ms": 1000 * (redis_1 - redis_0) / taken,
        }
    finally:
        if worker is not None:
            worker.stop()
        if redis_proc is not None:
            redis_proc.stop()


def _cpu(proc: Proc | None) -> float:
    return proc_cpu_s(proc.pid) if proc is not None else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--output", type=Path, default=RESULTS / "celery_floor.md")
    args = parser.parse_args()

    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    rows = []
    first: float | None = None
    for ack_emulation in (True, False):
        for task_events in (True, False):
            m = measure(args.messages, args.concurrency, ack_emulation, task_events)
            total = m["worker_ms"] + m["redis_ms"]
            first = first or total
            rows.append(
                (
                    "on" if ack_emulation else "off",
                    "on" if task_events else "off",
                    f"{m['per_s']:.0f}",
                    f"{m['worker_ms']:.3f}",
                    f"{m['redis_ms']:.3f}",
                    f"**{total:.3f}**",
                    f"{total / first:.2f}",
                    int(m["taken"]),
                )
            )
            print(rows[-1], flush=True)

    lines = [
        "# Celery's own cost per message (a task that does nothing)",
        "",
        "```sh",
        command_line("bench.celery_floor"),
        "```",
        "",
        f"- Run: {started}",
        f"- Code: {git_state()}",
        *[f"- {what}: {value}" for what, value in machine()],
        "- Packages: " + ", ".join(f"{n} {v}" for n, v in versions(["celery", "kombu", "redis"])),
        f"- One worker, `-P threads -c {args.concurrency}`, {args.messages} messages queued before it starts;"
        " CPU measured while it drains the middle 80 % of them (see the module docstring).",
        "",
        *table(
            [
                "ack emulation",
                "task events",
                "messages/s",
                "worker CPU ms/msg",
                "redis CPU ms/msg",
                "together",
                "vs first row",
                "messages measured",
            ],
            rows,
        ),
        "",
    ]
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
