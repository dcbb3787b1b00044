"""`Client` and `AsyncClient`: the entry points, one blocking, one for asyncio, with the same methods.

`submit(program, **inputs)` is the short form: the keyword arguments are
the program's input fields and nothing else, so no input name can collide
with an option. `create_job(program, inputs, **options)` takes the input as
a mapping and the options (model, temperature, stream, expires_after_s,
webhook_url, idempotency_key) as keywords, plus `wait_s`: hold the
submission open up to that long (the API's `?wait`, at most WAIT_MAX_S) so
a short job comes back finished in one round trip.
"""

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Self, Unpack

import httpx

from dspy_jobs_client.batches import AsyncBatch, Batch
from dspy_jobs_client.feedback import VersionFeedback
from dspy_jobs_client.http import AsyncTransport, RetryPolicy, Settings, SyncTransport
from dspy_jobs_client.jobs import AsyncJob, Job
from dspy_jobs_client.polling import WAIT_MAX_S
from dspy_jobs_client.records import BatchRecord, JobRecord, ProgramInfo
from dspy_jobs_client.submissions import (
    BatchItem,
    SubmitOptions,
    batch_body,
    idempotency_headers,
    job_body,
    program_path,
)
from dspy_jobs_client.versions import OptimizationRecord, ReplayRecord, RolloutRecord, VersionRecord, canary_body


def _settings(base_url: str, api_key: str | None, timeout_s: float, max_retries: int) -> Settings:
    return Settings(base_url=base_url, api_key=api_key, timeout_s=timeout_s, retry=RetryPolicy(max_retries))


class _Waits:
    """`?wait` for a submission, and a read timeout long enough to hear the answer."""

    def __init__(self, wait_s: float | None, wait_max_s: float, timeout_s: float) -> None:
        self.wait_s = min(wait_s, wait_max_s) if wait_s else None
        self.params = {"wait": self.wait_s} if self.wait_s else None
        self.timeout = httpx.Timeout(timeout_s + (self.wait_s or 0.0))


class Client:
    """A dspy-jobs API at `base_url`; `api_key` is sent as `Authorization: Bearer <key>`.

    Failed requests are retried `max_retries` times when that is safe (see
    `dspy_jobs_client.http`); `wait_max_s` is the server's WAIT_MAX_S.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        wait_max_s: float = WAIT_MAX_S,
    ) -> None:
        self._transport = SyncTransport(_settings(base_url, api_key, timeout_s, max_retries))
        self._wait_max_s = wait_max_s

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    def submit(self, program: str, /, **inputs: Any) -> Job:
        """Submit a job of `program` with these input fields, the options left to the server."""
        return self.create_job(program, inputs)

    def create_job(
        self,
        program: str,
        inputs: Mapping[str, Any],
        /,
        *,
        wait_s: float | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Job:
        """Submit a job of `program`; with `wait_s`, answer once it has ended if it does within that long."""
        waits = _Waits(wait_s, self._wait_max_s, self._transport.settings.timeout_s)
        data = self._transport.json(
            "POST",
            program_path(program, "jobs"),
            json=job_body(inputs, options),
            params=waits.params,
            headers=idempotency_headers(options),
            idempotent=True,
            request_timeout=waits.timeout,
        )
        return Job(self._transport, JobRecord.from_json(data), self._wait_max_s)

    def get_job(self, job_id: str) -> Job:
        """A job submitted earlier (a batch item is `<batch id>-<index>`); `NotFound` if there is none."""
        data = self._transport.json("GET", f"/jobs/{job_id}", idempotent=True)
        return Job(self._transport, JobRecord.from_json(data), self._wait_max_s)

    def batch(
        self, program: str, items: Iterable[Mapping[str, Any] | BatchItem], /, **options: Unpack[SubmitOptions]
    ) -> Batch:
        """Submit a batch of `program` jobs, one per item (its input fields, or a `BatchItem`)."""
        data = self._transport.json(
            "POST",
            program_path(program, "batches"),
            json=batch_body(items, options),
            headers=idempotency_headers(options),
            idempotent=True,
        )
        return Batch(self._transport, BatchRecord.from_json(data))

    def get_batch(self, batch_id: str) -> Batch:
        """A batch submitted earlier; `NotFound` if there is none."""
        data = self._transport.json("GET", f"/batches/{batch_id}", idempotent=True)
        return Batch(self._transport, BatchRecord.from_json(data))

    def programs(self) -> list[ProgramInfo]:
        """Every program the API serves, with its input and output JSON Schemas."""
        return [ProgramInfo.from_json(p) for p in self._transport.json("GET", "/programs", idempotent=True)]

    def program(self, name: str) -> ProgramInfo:
        """One program; `NotFound` if the API serves none by that name."""
        return ProgramInfo.from_json(self._transport.json("GET", program_path(name), idempotent=True))

    def feedback_summary(self, program: str) -> list[VersionFeedback]:
        """Feedback on the program's jobs per version that served them, newest version first."""
        data = self._transport.json("GET", program_path(program, "feedback"), idempotent=True)
        return [VersionFeedback.from_json(v) for v in data["versions"]]

    def versions(self, program: str) -> list[VersionRecord]:
        """The program's versions side by side (newest first): role, share, jobs, failures, latency, feedback."""
        data = self._transport.json("GET", program_path(program, "versions"), idempotent=True)
        return [VersionRecord.from_json(v) for v in data["versions"]]

    def rollout(self, program: str) -> RolloutRecord:
        """Which versions serve the program's jobs now, and the history of its rollouts."""
        return RolloutRecord.from_json(self._transport.json("GET", program_path(program, "rollout"), idempotent=True))

    def start_canary(
        self, program: str, version: str, percent: float, *, auto_rollback: Mapping[str, Any] | None = None
    ) -> RolloutRecord:
        """Serve `version` to `percent` of the program's jobs (an operator's key); `auto_rollback`:
        `{"margin": 0.1, "min_jobs": 20}` to roll it back by itself when it fails more than the stable one."""
        data = self._transport.json(
            "PUT", program_path(program, "rollout"), json=canary_body(version, percent, auto_rollback), idempotent=True
        )
        return RolloutRecord.from_json(data)

    def promote(self, program: str) -> RolloutRecord:
        """The candidate serves every job from now on."""
        data = self._transport.json("POST", program_path(program, "rollout/promote"), idempotent=False)
        return RolloutRecord.from_json(data)

    def rollback(self, program: str) -> RolloutRecord:
        """Drop the candidate, or (with none) undo the last promotion."""
        data = self._transport.json("POST", program_path(program, "rollout/rollback"), idempotent=False)
        return RolloutRecord.from_json(data)

    def replay(self, program: str, jobs: Mapping[str, Any] | None = None, **against: Any) -> ReplayRecord:
        """Run past jobs' inputs again (an operator's key): `jobs` filters them (`version`, `created_after`,
        `created_before`, `feedback`, `batch_id`, `limit`), `against` says on what (`version`, `model`,
        `temperature`). Read it again with `get_replay` until `done`."""
        body = {"jobs": dict(jobs or {}), **against}
        data = self._transport.json("POST", program_path(program, "replays"), json=body, idempotent=False)
        return ReplayRecord.from_json(data)

    def get_replay(self, program: str, replay_id: str) -> ReplayRecord:
        data = self._transport.json("GET", program_path(program, f"replays/{replay_id}"), idempotent=True)
        return ReplayRecord.from_json(data)

    def optimize(self, program: str, **body: Any) -> OptimizationRecord:
        """Build a candidate version from feedback (an operator's key): `optimizer`, `trainset` (a filter),
        `metric`, `demos`, `holdout`, `budget_calls`, `seed`. Read it again with `get_optimization`."""
        data = self._transport.json("POST", program_path(program, "optimizations"), json=body, idempotent=False)
        return OptimizationRecord.from_json(data)

    def get_optimization(self, program: str, optimization_id: str) -> OptimizationRecord:
        path = program_path(program, f"optimizations/{optimization_id}")
        return OptimizationRecord.from_json(self._transport.json("GET", path, idempotent=True))

    def cancel_optimization(self, program: str, optimization_id: str) -> OptimizationRecord:
        path = program_path(program, f"optimizations/{optimization_id}/cancel")
        return OptimizationRecord.from_json(self._transport.json("POST", path, idempotent=False))


class AsyncClient:
    """`Client` for asyncio: the same methods, awaited; streams and results are async iterators."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        wait_max_s: float = WAIT_MAX_S,
    ) -> None:
        self._transport = AsyncTransport(_settings(base_url, api_key, timeout_s, max_retries))
        self._wait_max_s = wait_max_s

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def submit(self, program: str, /, **inputs: Any) -> AsyncJob:
        """Submit a job of `program` with these input fields, the options left to the server."""
        return await self.create_job(program, inputs)

    async def create_job(
        self,
        program: str,
        inputs: Mapping[str, Any],
        /,
        *,
        wait_s: float | None = None,
        **options: Unpack[SubmitOptions],
    ) -> AsyncJob:
        """Submit a job of `program`; with `wait_s`, answer once it has ended if it does within that long."""
        waits = _Waits(wait_s, self._wait_max_s, self._transport.settings.timeout_s)
        data = await self._transport.json(
            "POST",
            program_path(program, "jobs"),
            json=job_body(inputs, options),
            params=waits.params,
            headers=idempotency_headers(options),
            idempotent=True,
            request_timeout=waits.timeout,
        )
        return AsyncJob(self._transport, JobRecord.from_json(data), self._wait_max_s)

    async def get_job(self, job_id: str) -> AsyncJob:
        """A job submitted earlier (a batch item is `<batch id>-<index>`); `NotFound` if there is none."""
        data = await self._transport.json("GET", f"/jobs/{job_id}", idempotent=True)
        return AsyncJob(self._transport, JobRecord.from_json(data), self._wait_max_s)

    async def batch(
        self, program: str, items: Iterable[Mapping[str, Any] | BatchItem], /, **options: Unpack[SubmitOptions]
    ) -> AsyncBatch:
        """Submit a batch of `program` jobs, one per item (its input fields, or a `BatchItem`)."""
        data = await self._transport.json(
            "POST",
            program_path(program, "batches"),
            json=batch_body(items, options),
            headers=idempotency_headers(options),
            idempotent=True,
        )
        return AsyncBatch(self._transport, BatchRecord.from_json(data))

    async def get_batch(self, batch_id: str) -> AsyncBatch:
        """A batch submitted earlier; `NotFound` if there is none."""
        data = await self._transport.json("GET", f"/batches/{batch_id}", idempotent=True)
        return AsyncBatch(self._transport, BatchRecord.from_json(data))

    async def programs(self) -> list[ProgramInfo]:
        """Every program the API serves, with its input and output JSON Schemas."""
        return [ProgramInfo.from_json(p) for p in await self._transport.json("GET", "/programs", idempotent=True)]

    async def program(self, name: str) -> ProgramInfo:
        """One program; `NotFound` if the API serves none by that name."""
        data = await self._transport.json("GET", program_path(name), idempotent=True)
        return ProgramInfo.from_json(data)

    async def feedback_summary(self, program: str) -> list[VersionFeedback]:
        """Feedback on the program's jobs per version that served them, newest version first."""
        data = await self._transport.json("GET", program_path(program, "feedback"), idempotent=True)
        return [VersionFeedback.from_json(v) for v in data["versions"]]

    async def versions(self, program: str) -> list[VersionRecord]:
        """The program's versions side by side (newest first): role, share, jobs, failures, latency, feedback."""
        data = await self._transport.json("GET", program_path(program, "versions"), idempotent=True)
        return [VersionRecord.from_json(v) for v in data["versions"]]

    async def rollout(self, program: str) -> RolloutRecord:
        """Which versions serve the program's jobs now, and the history of its rollouts."""
        data = await self._transport.json("GET", program_path(program, "rollout"), idempotent=True)
        return RolloutRecord.from_json(data)

    async def start_canary(
        self, program: str, version: str, percent: float, *, auto_rollback: Mapping[str, Any] | None = None
    ) -> RolloutRecord:
        """Serve `version` to `percent` of the program's jobs (see `Client.start_canary`)."""
        data = await self._transport.json(
            "PUT", program_path(program, "rollout"), json=canary_body(version, percent, auto_rollback), idempotent=True
        )
        return RolloutRecord.from_json(data)

    async def promote(self, program: str) -> RolloutRecord:
        """The candidate serves every job from now on."""
        data = await self._transport.json("POST", program_path(program, "rollout/promote"), idempotent=False)
        return RolloutRecord.from_json(data)

    async def rollback(self, program: str) -> RolloutRecord:
        """Drop the candidate, or (with none) undo the last promotion."""
        data = await self._transport.json("POST", program_path(program, "rollout/rollback"), idempotent=False)
        return RolloutRecord.from_json(data)

    async def replay(self, program: str, jobs: Mapping[str, Any] | None = None, **against: Any) -> ReplayRecord:
        """Run past jobs' inputs again (see `Client.replay`)."""
        body = {"jobs": dict(jobs or {}), **against}
        data = await self._transport.json("POST", program_path(program, "replays"), json=body, idempotent=False)
        return ReplayRecord.from_json(data)

    async def get_replay(self, program: str, replay_id: str) -> ReplayRecord:
        data = await self._transport.json("GET", program_path(program, f"replays/{replay_id}"), idempotent=True)
        return ReplayRecord.from_json(data)

    async def optimize(self, program: str, **body: Any) -> OptimizationRecord:
        """Build a candidate version from feedback (see `Client.optimize`)."""
        data = await self._transport.json("POST", program_path(program, "optimizations"), json=body, idempotent=False)
        return OptimizationRecord.from_json(data)

    async def get_optimization(self, program: str, optimization_id: str) -> OptimizationRecord:
        path = program_path(program, f"optimizations/{optimization_id}")
        return OptimizationRecord.from_json(await self._transport.json("GET", path, idempotent=True))

    async def cancel_optimization(self, program: str, optimization_id: str) -> OptimizationRecord:
        path = program_path(program, f"optimizations/{optimization_id}/cancel")
        return OptimizationRecord.from_json(await self._transport.json("POST", path, idempotent=False))
