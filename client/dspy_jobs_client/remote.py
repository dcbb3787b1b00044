"""`RemoteProgram`: a served program as one step of a DSPy pipeline.

It is a `dspy.Module`: calling it (or `await .acall(...)`) runs one job of
the program on the service and returns a `dspy.Prediction` whose fields are
typed as the program's signature says (`GET /programs/{name}` gives the
output JSON Schema: a `list[str]` field is a list, an `int` an int, a
pydantic model an instance of a model with its fields), so the next step
of the pipeline uses it as it would a local program's. A job that does not
succeed raises (`JobFailed`, `JobCancelled`, `JobExpired`); one that has
not ended within `timeout_s` is cancelled, and the call raises `JobTimeout`.

Inside `dspy.track_usage()`, the job's LM tokens are counted under the
job's model (or `dspy-jobs/<program>` when it ran on the server's default).

The only module of the client that imports dspy; `import dspy_jobs_client`
does not load it until `RemoteProgram` is asked for.
"""

import asyncio
import contextlib
import copy
import math
from typing import Any, Self, Unpack

import dspy
from pydantic import TypeAdapter, ValidationError

from dspy_jobs_client.client import AsyncClient, Client
from dspy_jobs_client.errors import DspyJobsError, JobTimeout
from dspy_jobs_client.jobs import outcome
from dspy_jobs_client.polling import Deadline
from dspy_jobs_client.records import JobRecord, ProgramInfo
from dspy_jobs_client.schemas import field_adapters
from dspy_jobs_client.submissions import JobOptions


def _adapters(program: ProgramInfo) -> dict[str, TypeAdapter[Any]]:
    if not program.available:
        raise DspyJobsError(f"program {program.name!r} cannot be served: {program.problem}")
    return field_adapters(program.output_schema or {})


class RemoteProgram(dspy.Module):
    """Program `program` of the service `client` talks to, as a `dspy.Module`.

    `timeout_s` bounds each call (None: no limit); the options apply to every
    job it submits. Jobs do not stream unless `stream=True`: nobody watches a
    pipeline step's tokens, and not streaming costs the worker less.
    """

    def __init__(
        self,
        client: Client | AsyncClient,
        program: str,
        *,
        timeout_s: float | None = 600.0,
        **options: Unpack[JobOptions],
    ) -> None:
        super().__init__()
        self.client = client
        self.program_name = program
        self.timeout_s = timeout_s
        self.options: JobOptions = {"stream": False, **options}
        # Read at the first call, through whichever client this is.
        self._adapters: dict[str, TypeAdapter[Any]] | None = None

    def __repr__(self) -> str:
        return f"RemoteProgram({self.program_name!r})"

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        # Optimizers deep-copy whole pipelines. A RemoteProgram has no parameters to copy, and its client
        # (a connection pool) must be shared, not copied.
        copied = copy.copy(self)
        copied.options = self.options.copy()
        memo[id(self)] = copied
        return copied

    def forward(self, **inputs: Any) -> dspy.Prediction:
        client = self.client
        if not isinstance(client, Client):
            raise TypeError(f"{self!r} runs on an AsyncClient: call it with `await program.acall(...)`")
        if self._adapters is None:
            self._adapters = _adapters(client.program(self.program_name))
        deadline = Deadline(self.timeout_s)
        job = client.create_job(self.program_name, inputs, wait_s=self._wait_s, **self.options)
        try:
            record = job.wait(deadline.remaining_s())
        except JobTimeout:
            # Nobody will read this job's answer: stop it spending the LM's time.
            with contextlib.suppress(DspyJobsError):
                job.cancel()
            raise
        return self._prediction(record)

    async def aforward(self, **inputs: Any) -> dspy.Prediction:
        client = self.client
        if isinstance(client, Client):
            # `to_thread` carries dspy's context (settings, usage tracker) along.
            return await asyncio.to_thread(self.forward, **inputs)
        if self._adapters is None:
            self._adapters = _adapters(await client.program(self.program_name))
        deadline = Deadline(self.timeout_s)
        job = await client.create_job(self.program_name, inputs, wait_s=self._wait_s, **self.options)
        try:
            record = await job.wait(deadline.remaining_s())
        except JobTimeout:
            with contextlib.suppress(DspyJobsError):
                await job.cancel()
            raise
        return self._prediction(record)

    @property
    def _wait_s(self) -> float:
        """How long to hold the submission open (the client caps it at the server's WAIT_MAX_S)."""
        return math.inf if self.timeout_s is None else self.timeout_s

    def _prediction(self, record: JobRecord) -> dspy.Prediction:
        adapters = self._adapters or {}
        values: dict[str, Any] = {}
        for name, value in outcome(record).items():
            adapter = adapters.get(name)
            try:
                values[name] = adapter.validate_python(value) if adapter is not None else value
            except ValidationError as e:
                raise DspyJobsError(
                    f"job {record.id}: field {name!r} does not fit program {self.program_name!r}'s output schema "
                    f"(was the program changed since this RemoteProgram read it?): {e}"
                ) from e
        tracker = dspy.settings.usage_tracker
        if tracker is not None and record.usage is not None:
            tracker.add_usage(
                record.model or f"dspy-jobs/{self.program_name}",
                {
                    "prompt_tokens": record.usage.prompt_tokens,
                    "completion_tokens": record.usage.completion_tokens,
                    "total_tokens": record.usage.total_tokens,
                },
            )
        return dspy.Prediction(**values)
