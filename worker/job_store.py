"""The worker's reads and writes of job records: each one step in Redis, fenced by the lease token.

A worker that takes a job makes a lease token for it; claiming it (taken,
waiting for LM capacity), starting an attempt, every token event, renewing
the lease, retrying and ending it all carry that token, and the functions in
core/lua/jobs.lua refuse any of them once the token no longer holds the job.
So a worker that stalled past its lease (a GC pause, a frozen VM, SIGSTOP)
and wakes up after another worker took the job over writes nothing: it learns
of it at its next write or renewal and stops.
"""

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from core import keys, replication, scripts
from core.events import EventType
from core.jobs import JobError, JobLinks, JobStatus, deliveries_lost, job_from_fields
from core.settings import Settings
from worker.metrics import Increment, outcome_increments

log = logging.getLogger(__name__)

_QUEUED = json.dumps({"status": JobStatus.queued.value}, separators=(",", ":"))


@dataclass
class Taken:
    """What a claim or start found: `code` (attempts when started, 0 when claimed, else a `Refusal`),
    with the record, or the status it was refused for."""

    code: int
    fields: dict[str, str]
    status: str = ""


def job_keys(settings: Settings, job_id: str) -> list[str]:
    return keys.job_function_keys(job_id, settings.interactive_queue)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_jsonable)


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    return str(value)


def _taken(found: list[Any]) -> Taken:
    code, rest = int(found[0]), found[1]
    if isinstance(rest, list):
        return Taken(code, dict(zip(rest[::2], rest[1::2], strict=True)))
    return Taken(code, {}, str(rest))


class JobStore:
    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self._redis = client
        self._settings = settings

    def _lease_expiry(self, now: float) -> str:
        return repr(now + self._settings.job_lease_s)

    async def claim(self, job_id: str, token: str, worker: str, waiting: Mapping[str, Any]) -> Taken:
        """Take the job to wait for LM capacity: its lease, and a `waiting` event saying why."""
        now = time.time()
        found = await scripts.acall(
            self._redis,
            "job_claim",
            job_keys(self._settings, job_id),
            [
                job_id,
                repr(now),
                self._lease_expiry(now),
                token,
                worker,
                self._settings.event_stream_maxlen,
                self._settings.job_ttl_s,
                dumps(waiting),
            ],
        )
        return _taken(found)

    async def start(self, job_id: str, token: str, worker: str, alone: bool, waiting: Mapping[str, Any]) -> Taken:
        """Start an attempt: counted, leased, announced by its `running` event. A job on its last delivery is
        started only `alone` (nothing else runs in this process); otherwise it is claimed with the `waiting`
        event, and the code is 0 (worker/isolation.py)."""
        found = await scripts.acall(
            self._redis,
            "job_start",
            job_keys(self._settings, job_id),
            self._start_args(job_id, token, worker, alone, waiting),
        )
        return _taken(found)

    async def start_item(
        self,
        job_id: str,
        token: str,
        worker: str,
        fields: Mapping[str, str],
        retries: str,
        alone: bool,
        waiting: Mapping[str, Any],
    ) -> Taken:
        """`start` for a picked batch item, creating its record (`fields`) if it has none."""
        args: list[scripts.Arg] = [*self._start_args(job_id, token, worker, alone, waiting), _QUEUED]
        for pair in fields.items():
            args += pair
        found = await scripts.acall(self._redis, "item_start", [*job_keys(self._settings, job_id), retries], args)
        return _taken(found)

    def _start_args(
        self, job_id: str, token: str, worker: str, alone: bool, waiting: Mapping[str, Any]
    ) -> list[scripts.Arg]:
        now = time.time()
        return [
            job_id,
            repr(now),
            self._lease_expiry(now),
            token,
            worker,
            self._settings.event_stream_maxlen,
            self._settings.job_ttl_s,
            "1" if alone else "0",
            self._settings.job_max_deliveries - 1,
            dumps(waiting),
        ]

    async def emit(self, job_id: str, token: str, event_type: EventType, data: Mapping[str, Any]) -> int:
        """One event of the attempt `token` holds; what `append_event` returns."""
        seq: int = await scripts.acall(
            self._redis,
            "append_event",
            job_keys(self._settings, job_id)[:3],
            [event_type.value, dumps(data), self._settings.event_stream_maxlen, self._settings.job_ttl_s, token],
        )
        return seq

    async def renew(self, leases: Mapping[str, str]) -> list[str]:
        """Extend the leases `leases` (job id -> token) still hold; the ids of those they no longer hold."""
        if not leases:
            return []
        script_keys, args = renew_call(leases, self._lease_expiry(time.time()))
        lost = await scripts.acall(self._redis, "job_renew", script_keys, args)
        return [str(job_id) for job_id in lost]

    async def end(
        self,
        job_id: str,
        token: str,
        fields: Mapping[str, str],
        event_type: EventType,
        updates: Mapping[str, str],
        tokens: Sequence[tuple[str, str]] = (),
        unstarted: bool = False,
    ) -> int:
        """Write the job's terminal state after any whole-field `tokens`; its event carries the public record.

        `token` '' for a writer that holds no lease (then nobody may hold a live one); `unstarted`: only if
        the job never started. Releases the lease and counts the outcome in the metrics in the same step.
        Returns the terminal event's sequence number, or the refusal (nothing written)."""
        final = {**fields, **updates}
        record = job_from_fields(final, JobLinks.for_job(job_id))
        events = [(EventType.token.value, dumps({"field": f, "text": t})) for f, t in tokens]
        events.append((event_type.value, record.model_dump_json()))
        args = end_args(
            job_id,
            token,
            self._settings,
            unstarted,
            events,
            updates,
            outcome_increments(final, self._settings.lm_model),
        )
        try:
            seq: int = await replication.acall(
                self._redis, self._settings, "job_end", job_keys(self._settings, job_id), args
            )
        except replication.NotReplicated as e:
            # Stored on the primary; if it fails over first, the job runs again (core/replication.py).
            log.warning("job %s: its end is not confirmed on a replica: %s", job_id, e)
            return int(e.result)
        return seq

    async def expire(self, job_id: str, token: str, fields: Mapping[str, str]) -> int:
        """End a job that was not started before its deadline; what `end` returns (refused if it started)."""
        created, expires = float(fields["created_at"]), float(fields["expires_at"])
        error = JobError(
            type="JobExpired",
            message=f"not started within {expires - created:g} s of its submission (expires_after_s); it never ran",
            retryable=False,
            code=408,
        )
        updates = {
            "status": JobStatus.expired.value,
            "finished_at": repr(time.time()),
            "error": error.model_dump_json(),
        }
        return await self.end(job_id, token, fields, EventType.error, updates, unstarted=True)

    async def retry(self, job_id: str, token: str, due: float, data: Mapping[str, Any]) -> int:
        """Back to the queue for another attempt from `due`; 1: send its task again, 2: a batch item
        (back in its batch's turn), negative: refused."""
        code: int = await scripts.acall(
            self._redis,
            "job_retry",
            job_keys(self._settings, job_id),
            [job_id, repr(due), token, self._settings.event_stream_maxlen, self._settings.job_ttl_s, dumps(data)],
        )
        return code

    async def why_lost(self, job_id: str) -> str:
        """Why a write or a lease renewal was refused: `cancelled` (by a client, or the record is gone), else
        `fenced` (another worker took the job over, and may have finished it)."""
        status = await self._redis.hget(keys.job(job_id), "status")
        return "cancelled" if status in (None, JobStatus.cancelled.value) else "fenced"

    async def unclaim(self, job_id: str, token: str) -> int:
        """Give back a job claimed and not started; 1: send its task again, 2: a batch item, 0: not ours."""
        code: int = await scripts.acall(
            self._redis, "job_unclaim", job_keys(self._settings, job_id), [job_id, token, repr(time.time())]
        )
        return code

    async def requeue_lost(self, job_id: str, now: float, data: Mapping[str, Any]) -> int:
        """A job whose lease ran out, with `data` for its `retrying` event: 1: send its task again, 2: a batch
        item, 3: its last allowed delivery was lost and it ended failed, `DeadLettered`; 0: nothing to do.

        The record is read first, so that the failure is written, with its event and metrics, in the step
        that counts the loss; that step does nothing if the record changed in between."""
        fields = cast(dict[str, str], await self._redis.hgetall(keys.job(job_id)))
        status, token = fields.get("status", ""), fields.get("lease", "")
        args: list[scripts.Arg] = [job_id, repr(now), self._settings.event_stream_maxlen, self._settings.job_ttl_s]
        if status != JobStatus.running.value:
            args += [dumps(data), self._settings.job_max_deliveries, status, token]
        else:
            lost = deliveries_lost(fields) + 1
            args += [dumps({**data, "deliveries_lost": lost}), self._settings.job_max_deliveries, status, token]
            args += self._dead_letter_args(job_id, token, fields, lost, now)
        code: int = await scripts.acall(self._redis, "job_requeue_lost", job_keys(self._settings, job_id), args)
        return code

    def _dead_letter_args(
        self, job_id: str, token: str, fields: Mapping[str, str], lost: int, now: float
    ) -> list[scripts.Arg]:
        """`job_end`'s ARGV that end the running job failed, `DeadLettered`, after its `lost`-th lost delivery."""
        error = JobError(
            type="DeadLettered",
            message=f"not delivered again: the worker running it was lost {lost} times (killed, out of memory, "
            f"crashed, or stalled past its lease; JOB_MAX_DELIVERIES is {self._settings.job_max_deliveries})",
            retryable=False,
            # HTTP's 508 Loop Detected: the service stopped a redelivery loop. No other failure uses it: a
            # crash inside an attempt that did report is a 500.
            code=508,
            attempts=int(fields.get("attempts") or 0),
        )
        updates = {
            "status": JobStatus.failed.value,
            "error": error.model_dump_json(),
            "finished_at": repr(now),
            "deliveries_lost": str(lost),
        }
        final = {**fields, **updates}
        record = job_from_fields(final, JobLinks.for_job(job_id))
        events = [(EventType.error.value, record.model_dump_json())]
        increments = outcome_increments(final, self._settings.lm_model)
        return end_args(job_id, token, self._settings, False, events, updates, increments)


def renew_call(leases: Mapping[str, str], expires: str) -> tuple[list[str], list[scripts.Arg]]:
    """KEYS and ARGV of `job_renew`: the leases set and each job's record; the new expiry, then (id, token)s."""
    args: list[scripts.Arg] = [expires]
    for job_id, token in leases.items():
        args += [job_id, token]
    return [keys.LEASES, *(keys.job(job_id) for job_id in leases)], args


def end_args(
    job_id: str,
    token: str,
    settings: Settings,
    unstarted: bool,
    events: Sequence[tuple[str, str]],
    updates: Mapping[str, str],
    increments: list[Increment],
) -> list[scripts.Arg]:
    """ARGV of `job_end`, laid out as core/lua/jobs.lua reads it: job id, token, maxlen, ttl_s, require,
    n, n (event type, data) pairs, m, m field/value pairs, then (hash, field, op, amount) increments."""
    args: list[scripts.Arg] = [
        job_id,
        token,
        settings.event_stream_maxlen,
        settings.job_ttl_s,
        "unstarted" if unstarted else "",
        len(events),
    ]
    for pair in events:
        args += pair
    args.append(len(updates))
    for pair in updates.items():
        args += pair
    return args + _metrics_args(increments)


def _metrics_args(increments: list[Increment]) -> list[scripts.Arg]:
    args: list[scripts.Arg] = []
    for key, field, amount in increments:
        hash_code = "h" if key == keys.METRICS_HISTOGRAMS else "c"
        args += [hash_code, field, "f" if isinstance(amount, float) else "i", repr(amount)]
    return args
