"""One job's life in a worker: taken, waiting for LM capacity, started, run, ended.

- **Taken, waiting for capacity, started**: worker/job_taking.py. An
  interactive job's message reaches a Celery thread, which hands it to the
  process's event loop and waits only until it has started; a batch item is
  picked by the bulk loop (worker/bulk.py) once it has a slot. A job with
  no slot free is claimed and waits, with no LM timeout and no attempt
  spent, until its slot comes or its deadline passes.
- **Run, ended**: worker/job_attempt.py. The program runs on the loop with
  the job's LM, every LM call holding a slot; the attempt ends succeeded,
  failed, or back to the queue, each one fenced write.
- **Alone**: a job on its last allowed delivery (its worker died running it
  every time but once) runs with nothing else in the process
  (worker/isolation.py).
- **Stopped** from outside (`stop_job`, here): a job this worker no longer
  holds (cancelled, or taken over after this worker stalled) is cancelled on
  the loop at once, which closes its LM call; it writes nothing more.

Every job holds a lease with a token, renewed by the engine every
`job_lease_s / 3` (worker/engine.py); the reaper of any worker gives a job
whose lease ran out to another worker (worker/reaper.py).
"""

import redis.asyncio as aioredis

from core.settings import Settings
from worker.capacity import Capacity, Slot
from worker.isolation import Isolation
from worker.job_attempt import JobAttempts
from worker.job_store import JobStore
from worker.job_taking import JobTaking
from worker.runs import Run, Send
from worker.runtime import Runtime
from worker.token_writer import TokenWriter

# What a job's first LM call is charged before its prompt is known, beyond its input and token limit.
_PROMPT_TOKENS_GUESS = 512


class JobRunner:
    """The jobs this process holds: taking them (worker/job_taking.py), running their attempts
    (worker/job_attempt.py), and stopping them from outside."""

    def __init__(
        self,
        settings: Settings,
        client: aioredis.Redis,
        runtime: Runtime,
        capacity: Capacity,
        writer: TokenWriter,
        send: Send,
        worker: str,
    ) -> None:
        self._settings = settings
        self.store = JobStore(client, settings)
        self.writer = writer
        self.worker = worker
        self.runs: dict[str, Run] = {}
        self.isolation = Isolation()
        self._attempts = JobAttempts(
            settings, client, runtime, capacity, writer, self.store, send, self.runs, self.isolation
        )
        self._taking = JobTaking(
            settings,
            client,
            capacity,
            self.store,
            self._attempts,
            send,
            worker,
            self.runs,
            self.first_call_estimate,
            self.isolation,
        )

    @property
    def stopping(self) -> bool:
        return self._taking.stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self._taking.stopping = value

    def first_call_estimate(self, fields: dict[str, str] | None = None) -> int:
        """Tokens a job's first call is charged when it is granted, before its prompt exists."""
        input_chars = len(fields.get("input", "")) if fields else 0
        return input_chars // 4 + _PROMPT_TOKENS_GUESS + self._settings.lm_max_tokens

    async def take(self, job_id: str, model: str | None) -> None:
        """An interactive job from its queue; returns once it has started or turned out not to be ours."""
        await self._taking.take(job_id, model)

    async def start_item(self, item_id: str, fields: dict[str, str], retries: str, slot: Slot) -> None:
        """A batch item picked by the bulk loop with `slot`: started, and run."""
        await self._taking.start_item(item_id, fields, retries, slot)

    def stop_job(self, job_id: str, reason: str) -> None:
        """Cancel whatever this process does for the job (it was cancelled, or is another worker's now)."""
        for run in list(self.runs.values()):
            if run.job_id == job_id and run.task is not None and run.stop is None:
                run.stop = reason
                run.task.cancel()

    def leases(self) -> dict[str, str]:
        return {run.job_id: run.token for run in self.runs.values() if run.leased}

    async def close(self) -> None:
        await self._attempts.close()
