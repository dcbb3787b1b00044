"""The automatic rollback rule: a canary whose candidate fails more than the stable version is dropped.

Off unless a rollout asks for it (`auto_rollback` in `PUT /programs/{name}/rollout`):
every `ROLLOUT_GUARD_INTERVAL_S` each worker reads the rollouts of the
programs it serves and, for those with the rule, the per-version counters
(core/metrics.py), and judges the jobs each version finished since the
canary began (core/rollouts.py `rollback_reason`): the candidate's failure
rate above the stable version's by more than `margin`, over at least
`min_jobs` of the candidate's jobs, rolls it back. Several workers may
judge at once; the rollout is written only over the revision that was
judged (`rollout_write`), so one rollback is written and a canary changed
meanwhile (promoted, re-weighted) is left alone. Each program is judged on
its own: one that cannot be read is logged and the others still are.
"""

import asyncio
import logging
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core import keys, rollouts
from core.settings import Settings

log = logging.getLogger(__name__)


class RolloutGuard:
    def __init__(self, client: aioredis.Redis, settings: Settings, programs: list[str], worker: str) -> None:
        self._redis = client
        self._settings = settings
        self._programs = programs
        self._worker = worker

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.rollout_guard_interval_s)
            try:
                await self.check()
            except RedisError as e:
                log.warning("rollout guard: Redis does not answer (%s); judging again later", e)

    async def check(self) -> list[str]:
        """Judge every guarded canary now; the programs rolled back."""
        guarded = []
        for program in self._programs:
            rollout, rev = await rollouts.read(self._redis, program)
            if rollout.auto_rollback is not None and rollout.candidate is not None:
                guarded.append((rollout, rev))
        if not guarded:
            return []
        counters = cast(dict[str, str], await self._redis.hgetall(keys.METRICS_COUNTERS))
        rolled_back = []
        for rollout, rev in guarded:
            try:
                if await self._judge(rollout, rev, counters):
                    rolled_back.append(rollout.program)
            except Exception:
                log.exception(
                    "rollout guard: could not judge the canary of %s; judging it again later", rollout.program
                )
        return rolled_back

    async def _judge(self, rollout: rollouts.Rollout, rev: int, counters: dict[str, str]) -> bool:
        reason = rollouts.rollback_reason(rollout, rollouts.version_counts(counters, rollout.program))
        if reason is None:
            return False
        changed = rollouts.rolled_back(rollout, self._worker, reason=reason, automatic=True)
        if not await rollouts.write(self._redis, changed, rev):
            return False  # changed meanwhile: judged again at the next round, as it stands then
        log.warning("rolled back the canary of %s: %s", rollout.program, reason)
        return True
