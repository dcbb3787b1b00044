"""What each worker process creates once: the LM and the loaded programs.

Created in the process that runs the jobs (worker/engine.py), at start-up
and lazily after, under a lock. Never with `dspy.configure` (only the
first configuring thread may call it again); jobs get their LM and flags
through `dspy.context` instead.

A process serves every registered program (core/programs.py), each loaded
once. New artifact versions are picked up without a restart: before each
job, and at every heartbeat, the artifact file is `stat`ed (microseconds);
when it changed and its version differs, the new version is loaded and
serves the jobs that start from then on, while jobs already running finish
on the version they started with (they hold their own reference). An
artifact built for other fields than the code's signature is refused with
the difference spelt out, and the version already loaded keeps serving.

A program registered by MLflow URI (`mlflow_uri`) is loaded from the
tracking server (worker/mlflow_loader.py) at start, and looked up again
only by `refresh_mlflow`, which the engine calls every `mlflow_refresh_s`
on a thread of its own (a slow tracking server must not hold up heartbeats):
there a moved alias is found, its new version loaded and swapped in as
above, and a program that could not be loaded is tried again. Jobs never
wait for the tracking server: one for an MLflow program this process has
not loaded fails at once with the reason. Each loaded version's signature
schemas are published in Redis (`keys.program_interface`) before the
version is served, for the API, which cannot import the program.

An artifact program may also have versions registered in Redis
(core/program_versions.py): an optimization's candidate, a build registered
by hand. Each heartbeat loads those not loaded yet (`refresh`), so a version
is loaded by every worker within a heartbeat of its registration, and says
which versions this process holds (`loaded_json`, for the API's check that
a rollout names a version some worker serves). A job of a rollout's
candidate, or pinned to a version, runs it (`version`).

Each load is counted in Redis (`keys.PROGRAM_LOADS`) so tests and operators
can see that loading happens once per process and version, not per job.
"""

import contextlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dspy
import redis
from pydantic import BaseModel, ValidationError

from core import keys
from core.mlflow_uris import CANDIDATE_ALIAS, MlflowUri, parse_mlflow_uri
from core.programs import ArtifactError, ArtifactInfo, RegistryError, parse_artifact
from core.redact import without_credentials
from core.settings import Settings
from program.lm import ServiceLM, build_adapter, build_lm
from program.registry import Metric, ProgramSpec, program_specs
from program.schemas import input_model, interface_mismatch, signature_schemas
from worker.mlflow_loader import MlflowLoader, MlflowLoadError, ResolvedModel
from worker.tracing import JobTracing

log = logging.getLogger(__name__)


class ProgramUnavailable(RuntimeError):
    """The job's program cannot be loaded here (unknown, no artifact, artifact for other fields)."""


class InvalidInput(ValueError):
    """The job's input does not fit the program's signature."""


@dataclass(frozen=True)
class LoadedProgram:
    name: str
    module: dspy.Module
    version: str
    input_model: type[BaseModel]
    # (mtime_ns, size) of the artifact file this was loaded from.
    file_state: tuple[int, int]

    def inputs(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The input as the program takes it: validated, typed (nested models as models)."""
        try:
            model = self.input_model.model_validate(raw)
        except ValidationError as e:
            raise InvalidInput(f"the input does not fit program {self.name!r}: {e}") from e
        return {name: getattr(model, name) for name in type(model).model_fields}


@dataclass
class _FromMlflow:
    """An MLflow program's state in this process, besides the version it serves."""

    uri: MlflowUri
    # Held while it is looked up and loaded: one load at a time per program.
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Why its last lookup or load failed: why it is not served, or (while a version is) not switched.
    problem: str | None = None


class Runtime:
    """One per worker process."""

    _OVERRIDE_LMS_MAX = 32

    def __init__(
        self,
        settings: Settings,
        redis_client: redis.Redis,
        lm_class: type[ServiceLM] = ServiceLM,
        prepare_lm: Callable[[dspy.LM], dspy.LM] = lambda lm: lm,
    ) -> None:
        self._settings = settings
        self._redis = redis_client
        self._lm_class = lm_class
        # Applied to every LM built here (the worker routes their calls through LM capacity).
        self._prepare_lm = prepare_lm
        self._lock = threading.Lock()
        # Held while a registered version loads: one load at a time, off the lock every job's lookup takes.
        self._version_lock = threading.Lock()
        self._pid = os.getpid()
        self._lm: dspy.LM | None = None
        self._override_lms: OrderedDict[tuple[str | None, float | None], dspy.LM] = OrderedDict()
        # A broken registry stops the worker at start, with the reason.
        self._specs = program_specs(settings)
        self._programs: dict[str, LoadedProgram] = {}
        self._metrics: dict[str, Metric | None] = {}
        # Registered versions (core/program_versions.py) loaded here, by (program, version).
        self._registered: dict[tuple[str, str], LoadedProgram] = {}
        # Registered versions that could not be loaded, and why (said once, not tried again).
        self._unloadable: dict[tuple[str, str], str] = {}
        self._adapters: dict[str, dspy.Adapter] = {}
        # Why a program cannot be served here, while it cannot (in each heartbeat, for `GET /programs`).
        self._problems: dict[str, str] = {}
        self._mlflow = {
            name: _FromMlflow(parse_mlflow_uri(spec.entry.mlflow_uri))
            for name, spec in self._specs.items()
            if spec.entry.mlflow_uri is not None
        }
        self._mlflow_loader = MlflowLoader(settings) if self._mlflow else None
        self.tracing = JobTracing(settings)

    def _check_pid(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError("Runtime used across a fork; create it in the process that runs the jobs")

    def lm(self, model: str | None = None, temperature: float | None = None) -> dspy.LM:
        """The process's LM, or a copy with this job's overrides (kept, a few at a time)."""
        self._check_pid()
        with self._lock:
            if self._lm is None:
                self._lm = self._prepare_lm(build_lm(self._settings, lm_class=self._lm_class))
            if model is None and temperature is None:
                return self._lm
            key = (model, temperature)
            lm = self._override_lms.get(key)
            if lm is None:
                built = build_lm(self._settings, model, temperature, lm_class=self._lm_class)
                lm = self._override_lms[key] = self._prepare_lm(built)
                while len(self._override_lms) > self._OVERRIDE_LMS_MAX:
                    self._override_lms.popitem(last=False)
            else:
                self._override_lms.move_to_end(key)
            return lm

    def adapter(self, model: str | None = None) -> dspy.Adapter:
        """The model's adapter (program/lm.py), one per model."""
        name = model or self._settings.lm_model
        with self._lock:
            adapter = self._adapters.get(name)
            if adapter is None:
                adapter = self._adapters[name] = build_adapter(self._settings, name)
            return adapter

    @property
    def program_names(self) -> list[str]:
        return list(self._specs)

    def spec(self, name: str) -> ProgramSpec:
        spec = self._specs.get(name)
        if spec is None:
            raise ProgramUnavailable(f"no program named {name!r} is registered here; known: {sorted(self._specs)}")
        return spec

    def metric(self, name: str) -> Metric | None:
        """The program's registered metric, if it has one that imports (imported once)."""
        spec = self.spec(name)
        if name not in self._metrics:
            try:
                self._metrics[name] = spec.metric() if spec.entry.metric else None
            except RegistryError as e:
                log.warning("program %s: its metric cannot be used: %s", name, e)
                self._metrics[name] = None
        return self._metrics[name]

    def current(self, name: str) -> LoadedProgram | None:
        """The program as loaded, if its artifact has not changed since (a `stat`: cheap enough for the event
        loop); None when `program` has to load it."""
        spec, loaded = self._specs.get(name), self._programs.get(name)
        if spec is None or loaded is None or name in self._mlflow:
            return loaded
        try:
            stat = os.stat(spec.artifact)
        except OSError:
            return loaded
        return loaded if loaded.file_state == (stat.st_mtime_ns, stat.st_size) else None

    def loaded_version(self, name: str, version: str) -> LoadedProgram | None:
        """`version` of the program if this process holds it (no I/O: cheap enough for the event loop)."""
        loaded = self._programs.get(name)
        if loaded is not None and loaded.version == version:
            return loaded
        return self._registered.get((name, version))

    def version(self, name: str, version: str) -> LoadedProgram:
        """`version` of the program: the one loaded from disk, or a registered one, loaded once."""
        self._check_pid()
        found = self.loaded_version(name, version)
        if found is not None:
            return found
        spec = self._specs.get(name)
        if spec is None:
            raise ProgramUnavailable(f"no program named {name!r} is registered here; known: {sorted(self._specs)}")
        if name in self._mlflow:
            return self._mlflow_version(spec, version)
        with self._version_lock:
            found = self.loaded_version(name, version)
            if found is not None:
                return found
            problem = self._unloadable.get((name, version))
            if problem is not None:
                raise ProgramUnavailable(problem)
            raw = self._redis.hget(keys.program_artifacts(name), version)
            if raw is None:
                current = self.program(name)
                if current.version == version:
                    return current
                raise ProgramUnavailable(
                    f"program {name!r} has no version {version!r}: neither its artifact on disk ({current.version}) "
                    "nor a registered one"
                )
            try:
                state, info = parse_artifact(name, spec.artifact, raw if isinstance(raw, bytes) else raw.encode())
                fresh = self._built(spec, state, info, f"registered version {version}", (0, 0))
            except (ArtifactError, RegistryError, ValueError) as e:
                problem = f"program {name!r}: registered version {version} cannot be served: {e}"
                self._unloadable[(name, version)] = problem
                log.error("%s", problem)
                raise ProgramUnavailable(problem) from e
            self._registered[(name, version)] = fresh
            return fresh

    def program(self, name: str) -> LoadedProgram:
        """The program's current version, loading it (again) if its artifact changed."""
        self._check_pid()
        spec = self._specs.get(name)
        if spec is None:
            raise ProgramUnavailable(f"no program named {name!r} is registered here; known: {sorted(self._specs)}")
        remote = self._mlflow.get(name)
        if remote is not None:
            loaded = self._programs.get(name)
            if loaded is None:
                raise ProgramUnavailable(remote.problem or f"program {name!r} is not loaded from MLflow yet")
            return loaded
        with self._lock:
            loaded = self._programs.get(name)
            try:
                stat = os.stat(spec.artifact)
            except OSError as e:
                if loaded is not None:
                    return loaded  # the file is being replaced, or was removed: keep serving what we have
                raise ProgramUnavailable(
                    f"program {name!r} has no artifact at {spec.artifact}; build it with "
                    f"`python -m program.optimize {name}`"
                ) from e
            file_state = (stat.st_mtime_ns, stat.st_size)
            if loaded is not None and loaded.file_state == file_state:
                return loaded
            try:
                fresh = self._load(spec, file_state, loaded)
            except (ArtifactError, RegistryError, ValueError, OSError) as e:
                if loaded is not None:
                    log.error("program %s: not switching from version %s: %s", name, loaded.version, e)
                    # Remember the file so a broken artifact is not re-read before every job.
                    self._programs[name] = LoadedProgram(
                        name, loaded.module, loaded.version, loaded.input_model, file_state
                    )
                    return loaded
                raise ProgramUnavailable(str(e)) from e
            self._programs[name] = fresh
            return fresh

    def refresh(self) -> None:
        """Load every artifact program now (and any new artifact version, and any newly registered version):
        called at start and at each heartbeat."""
        for name in self._specs:
            if name in self._mlflow:
                continue
            try:
                self.program(name)
                self._problems.pop(name, None)
            except ProgramUnavailable as e:
                if self._problems.get(name) != str(e):
                    log.warning("program %s unavailable: %s", name, e)
                self._problems[name] = str(e)
            for version in self._redis.hkeys(keys.program_versions(name)):
                version = version.decode() if isinstance(version, bytes) else str(version)
                if (name, version) not in self._registered and (name, version) not in self._unloadable:
                    with contextlib.suppress(ProgramUnavailable):
                        self.version(name, version)

    @property
    def has_mlflow_programs(self) -> bool:
        return bool(self._mlflow)

    def refresh_mlflow(self) -> None:
        """Look up every MLflow program that may have changed (an alias, or one not loaded yet) and load what
        did. Network calls, each bounded by MLFLOW_TIMEOUT_S: at start, then every MLFLOW_REFRESH_S on a
        thread of the engine's, never for a job."""
        self._check_pid()
        for name, remote in self._mlflow.items():
            with remote.lock:
                loaded = self._programs.get(name)
                if loaded is None or remote.uri.moves:
                    self._refresh_one(self._specs[name], remote, loaded)
            for version in self._rollout_versions(name, remote):
                if self.loaded_version(name, version) is None:
                    with contextlib.suppress(ProgramUnavailable):
                        self._mlflow_version(self._specs[name], version)

    def _mlflow_version(self, spec: ProgramSpec, version: str) -> LoadedProgram:
        """One exact version of a program from MLflow (`models:/<name>/<n>`), loaded once: a rollout's."""
        assert self._mlflow_loader is not None
        with self._version_lock:
            found = self.loaded_version(spec.name, version)
            if found is not None:
                return found
            problem = self._unloadable.get((spec.name, version))
            if problem is not None:
                raise ProgramUnavailable(problem)
            try:
                fresh = self._load_mlflow(spec, self._mlflow_loader.resolve(parse_mlflow_uri(version)))
            except Exception as e:
                problem = f"program {spec.name!r}: version {version} cannot be served: {type(e).__name__}: {e}"
                self._unloadable[(spec.name, version)] = without_credentials(problem)
                log.error("%s", problem)
                raise ProgramUnavailable(problem) from e
            self._registered[(spec.name, version)] = fresh
            return fresh

    def _rollout_versions(self, name: str, remote: _FromMlflow) -> list[str]:
        """The versions of an MLflow program a rollout may send jobs to: its candidate and stable ones, and the
        version its registered model's `candidate` alias names (where an optimization puts its candidate)."""
        wanted = []
        doc = self._redis.hget(keys.program_rollout(name), "doc")
        if doc:
            rollout = json.loads(doc)
            wanted += [v for v in (rollout.get("candidate"), rollout.get("stable")) if v]
        if remote.uri.model_name is not None and self._mlflow_loader is not None:
            with contextlib.suppress(MlflowLoadError):
                alias = parse_mlflow_uri(f"models:/{remote.uri.model_name}@{CANDIDATE_ALIAS}")
                wanted.append(self._mlflow_loader.resolve(alias).version)
        return wanted

    def _refresh_one(self, spec: ProgramSpec, remote: _FromMlflow, loaded: LoadedProgram | None) -> None:
        assert self._mlflow_loader is not None
        try:
            resolved = self._mlflow_loader.resolve(remote.uri)
            if loaded is not None and loaded.version == resolved.version:
                remote.problem = None
                return
            fresh = self._load_mlflow(spec, resolved)
        except Exception as e:
            # Anything a logged model can do wrong makes that program unavailable, never the worker fail.
            problem = str(e) if isinstance(e, MlflowLoadError | RegistryError) else f"{type(e).__name__}: {e}"
            # Said once, not at every refresh, while it stays the same.
            if remote.problem != problem:
                if loaded is not None:
                    # Keep serving what we have: the tracking server may be down for a while.
                    log.warning("program %s: still serving %s: %s", spec.name, loaded.version, problem)
                else:
                    log.warning("program %s unavailable: %s", spec.name, problem)
            remote.problem = problem
            return
        with self._lock:
            self._programs[spec.name] = fresh
        remote.problem = None
        if loaded is not None:
            log.info("program %s: switched from %s to %s", spec.name, loaded.version, fresh.version)

    def _load_mlflow(self, spec: ProgramSpec, resolved: ResolvedModel) -> LoadedProgram:
        assert self._mlflow_loader is not None
        module = self._mlflow_loader.load(resolved)
        signature = spec.signature(module)
        schemas = signature_schemas(spec.name, signature)
        if spec.entry.module is not None:
            # The entry names the interface it expects: a version logged for other fields is refused.
            mismatch = interface_mismatch(schemas, signature_schemas(spec.name, spec.signature(spec.build())))
            if mismatch:
                raise MlflowLoadError(
                    f"{resolved.version} was logged for other fields than {spec.entry.module} has ({mismatch})"
                )
        interface = {**schemas, "metadata": {"mlflow_uri": resolved.uri.uri, **resolved.metadata}}
        # Published before it serves, so the API never sees a version it cannot validate for.
        self._redis.hset(keys.program_interface(spec.name), resolved.version, json.dumps(interface))
        self._redis.hincrby(keys.PROGRAM_LOADS, spec.name, 1)
        log.info("loaded program %s version %s from MLflow (pid %s)", spec.name, resolved.version, os.getpid())
        return LoadedProgram(spec.name, module, resolved.version, input_model(spec.name, signature), (0, 0))

    def versions(self) -> dict[str, str]:
        """Program name -> the version this process serves now."""
        with self._lock:
            return {name: loaded.version for name, loaded in self._programs.items()}

    def versions_json(self) -> str:
        return json.dumps(self.versions())

    def loaded_json(self) -> str:
        """Program name -> every version this process holds (the one it serves by default and registered ones)."""
        with self._lock:
            loaded: dict[str, set[str]] = {name: {p.version} for name, p in self._programs.items()}
        for name, version in list(self._registered):
            loaded.setdefault(name, set()).add(version)
        return json.dumps({name: sorted(versions) for name, versions in loaded.items()})

    def problems(self) -> dict[str, str]:
        """Program name -> why this process cannot serve it, for the programs it cannot serve."""
        problems = dict(self._problems)
        problems.update({name: remote.problem for name, remote in self._mlflow.items() if remote.problem})
        # Published in Redis and shown by the API: a tracking URI's credentials stay here.
        return {name: without_credentials(p) for name, p in problems.items() if name not in self._programs}

    def warm(self) -> None:
        """Load every program and the LM client now, not on the first job."""
        self.refresh()
        self.refresh_mlflow()
        self.tracing.start()
        self.lm()
        if self._settings.effective_lm_engine == "litellm":
            import litellm  # noqa: F401  (seconds of import; pay them before the first job)

    def _load(self, spec: ProgramSpec, file_state: tuple[int, int], previous: LoadedProgram | None) -> LoadedProgram:
        state, info = parse_artifact(spec.name, spec.artifact, spec.artifact.read_bytes())
        if previous is not None and previous.version == info.version:
            return LoadedProgram(spec.name, previous.module, info.version, previous.input_model, file_state)
        return self._built(spec, state, info, str(spec.artifact), file_state)

    def _built(
        self, spec: ProgramSpec, state: dict[str, Any], info: ArtifactInfo, source: str, file_state: tuple[int, int]
    ) -> LoadedProgram:
        """The module of an artifact's parsed state, checked against the code's signature."""
        version = info.version
        built_for = info.signature_schemas(spec.name)
        module = spec.build()
        signature = spec.signature(module)
        mismatch = interface_mismatch(built_for, signature_schemas(spec.name, signature))
        if mismatch:
            raise ArtifactError(
                f"program {spec.name!r}: {source} (version {version}) was built for other fields than the "
                f"code's signature ({mismatch}); rebuild it with `python -m program.optimize {spec.name}`"
            )
        # From the parsed bytes, not `module.load(path)`: the file may be
        # replaced again between two reads, and the version must name what loaded.
        module.load_state(state)
        # Saved state may carry the LM it was optimized with; the job's LM
        # (from dspy.context) must win.
        module.set_lm(None)
        self._redis.hincrby(keys.PROGRAM_LOADS, spec.name, 1)
        log.info("loaded program %s version %s from %s (pid %s)", spec.name, version, source, os.getpid())
        return LoadedProgram(spec.name, module, version, input_model(spec.name, signature), file_state)
