"""Which loaded version of its program a job runs: pinned, a rollout's choice, or the program as registered.

Decided as each attempt starts (core/rollouts.py says how): a job pinned to
a version (its request's `version`, a replay's items) runs it; otherwise the
program's rollout, read from Redis (one small read per attempt), picks the
candidate for the job's share or the stable version; with no rollout, the
version as registered serves it (the artifact on disk, the MLflow URI's).
The same job gets the same version at every attempt while the rollout stays
as it is; the record names the version that served it (`program_version`).
"""

import asyncio

import redis.asyncio as aioredis

from core import rollouts
from worker.runtime import LoadedProgram, Runtime


async def program_for(runtime: Runtime, client: aioredis.Redis, job_id: str, fields: dict[str, str]) -> LoadedProgram:
    """The loaded program version the job runs; `ProgramUnavailable` when it cannot be loaded here."""
    name = fields["program"]
    wanted = fields.get("pin_version") or None
    if wanted is None:
        rollout, _ = await rollouts.read(client, name)
        wanted = rollouts.assign(rollout, job_id, fields.get("rollout_key") or None)
    if wanted is None:
        program = runtime.current(name)
        # A load (a new artifact version) reads and builds in a thread, off the loop every job runs on.
        return program if program is not None else await asyncio.to_thread(runtime.program, name)
    loaded = runtime.loaded_version(name, wanted)
    return loaded if loaded is not None else await asyncio.to_thread(runtime.version, name, wanted)
