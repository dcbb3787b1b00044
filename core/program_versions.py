"""Registered versions of an artifact program: more than the one artifact on disk, shared by every worker.

A program served from an artifact has its file on disk (`artifacts/<name>.json`)
and may have more versions registered in Redis: an optimization's candidate
(worker/optimization.py) or a build registered by hand
(`python -m program.optimize NAME --register`). Each is a whole artifact, the
same JSON `program.optimize` writes, kept in `keys.program_artifacts`, with its
metadata alone in `keys.program_versions` for the API to list. Any worker can
load any of them (worker/runtime.py), so a rollout (core/rollouts.py) can send
jobs to one without a file reaching every machine.

Registered versions are numbered after the artifact on disk and every version
registered before (`metadata.version`), so version numbers only grow.
"""

import json
from typing import Any, cast

import redis.asyncio as aioredis

from core import keys

# Versions tried at once when another registration took the number first.
_ATTEMPTS = 20


def _number(version: str | None) -> int:
    return int(version) if version is not None and version.isdigit() else 0


def metadata_of(artifact: dict[str, Any]) -> dict[str, Any]:
    """What the API lists of a version: its metadata without the signature's schemas."""
    metadata = artifact.get("metadata")
    return {k: v for k, v in (metadata if isinstance(metadata, dict) else {}).items() if k != "signature"}


async def register(redis: aioredis.Redis, program: str, artifact: dict[str, Any], disk_version: str | None) -> str:
    """Store `artifact` (JSON state with its `metadata`) as the program's next version; returns that version."""
    for _ in range(_ATTEMPTS):
        taken = cast(list[str], await redis.hkeys(keys.program_artifacts(program)))
        version = str(1 + max(_number(v) for v in [*taken, disk_version]))
        artifact = {**artifact, "metadata": {**artifact.get("metadata", {}), "version": int(version)}}
        # The artifact before its metadata: a version the API lists is one a worker can load.
        if await redis.hsetnx(keys.program_artifacts(program), version, json.dumps(artifact)):
            await redis.hset(keys.program_versions(program), version, json.dumps(metadata_of(artifact)))
            return version
    raise RuntimeError(f"could not register a version of {program}: {_ATTEMPTS} numbers taken in a row")


async def listed(redis: aioredis.Redis, program: str) -> dict[str, dict[str, Any]]:
    """Each registered version's metadata."""
    raw = cast(dict[str, str], await redis.hgetall(keys.program_versions(program)))
    return {version: json.loads(metadata) for version, metadata in raw.items()}
