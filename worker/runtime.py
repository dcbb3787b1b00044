"""What each worker process creates once: the LM and the loaded programs.

Created lazily, under a lock, in the process that runs the jobs: after the
fork with a prefork pool, on the first job with the threads pool. Never
in a parent that later forks, because an LM that already talked to the
provider shares pooled sockets with its children, and never with
`dspy.configure` (only the first configuring thread may call it again, and
billiard forks replacement children from another thread). Jobs get their
LM and flags through `dspy.context` instead.

Each program load is counted in Redis (`keys.PROGRAM_LOADS`) so tests and
operators can see that loading happens once per process, not per job.
"""

import logging
import os
import threading
from collections import OrderedDict

import dspy
import redis

from core import keys
from core.settings import Settings
from program.lm import build_adapter, build_lm
from program.registry import get_program_spec

log = logging.getLogger(__name__)


class Runtime:
    """One per worker process."""

    _OVERRIDE_LMS_MAX = 32

    def __init__(self, settings: Settings, redis_client: redis.Redis) -> None:
        self._settings = settings
        self._redis = redis_client
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._lm: dspy.LM | None = None
        self._override_lms: OrderedDict[tuple[str | None, float | None], dspy.LM] = OrderedDict()
        self._programs: dict[str, dspy.Module] = {}
        self.adapter = build_adapter()
        # DSPy's asyncify limiter must admit every concurrent streaming job.
        self.max_concurrent_jobs = max(settings.worker_concurrency, 8)

    def _check_pid(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError("Runtime used across a fork; create it in the process that runs the jobs")

    def lm(self, model: str | None = None, temperature: float | None = None) -> dspy.LM:
        """The process's LM, or a copy with this job's overrides (kept, a few at a time)."""
        self._check_pid()
        with self._lock:
            if self._lm is None:
                self._lm = build_lm(self._settings)
            if model is None and temperature is None:
                return self._lm
            key = (model, temperature)
            lm = self._override_lms.get(key)
            if lm is None:
                lm = self._override_lms[key] = build_lm(self._settings, model, temperature)
                while len(self._override_lms) > self._OVERRIDE_LMS_MAX:
                    self._override_lms.popitem(last=False)
            else:
                self._override_lms.move_to_end(key)
            return lm

    def program(self, name: str) -> dspy.Module:
        self._check_pid()
        with self._lock:
            program = self._programs.get(name)
            if program is None:
                program = self._programs[name] = self._load(name)
            return program

    def _load(self, name: str) -> dspy.Module:
        spec = get_program_spec(name)
        path = spec.artifact_path(self._settings.artifacts_dir)
        program = spec.build()
        program.load(str(path))
        # Saved state may carry the LM it was optimized with; the job's LM
        # (from dspy.context) must win.
        program.set_lm(None)
        self._redis.hincrby(keys.PROGRAM_LOADS, name, 1)
        log.info("loaded program %s from %s (pid %s)", name, path, os.getpid())
        return program
