"""An optimization job: hold out part of the examples, build a candidate, score both versions, register it.

A bulk worker picks it like any batch item (api/optimizations.py submits it
as a batch of one), with a bulk slot for its first LM call; every later call
takes a bulk slot of its own (worker/lm_gate.py), so it counts against the
model's capacity like any bulk work and never holds interactive jobs up.

1. The examples (core/optimizations.py) are shuffled by the spec's seed; a
   share (`holdout`, at least one) is held out, the rest is trained on.
2. The candidate is built from the current version (the rollout's stable
   one, or the program as registered) by the chosen optimizer, in a thread
   (worker/optimizers.py).
3. Candidate and current version answer every held-out input; the metric
   scores both against what feedback said is right.
4. The candidate is registered as the program's next version
   (core/program_versions.py), or for a program from MLflow logged as a new
   version of its registered model under the `candidate` alias: every
   worker loads it, nobody is served it until a rollout says so. The result
   names it, what it used, both scores and the LM calls spent.

Progress goes out as `status` events (`"status": "optimizing"`, `phase`,
`done`, `total`, `lm_calls`). Every LM call first asks the job's call scope
(`before_call`): a job no longer this worker's (cancelled) or out of its
budget of calls refuses the call, which ends the optimization there,
whichever thread made it; nothing is registered.
"""

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import dspy
import redis.asyncio as aioredis

from core import program_versions
from core.events import EventType
from core.mlflow_uris import CANDIDATE_ALIAS, parse_mlflow_uri, version_uri
from core.optimizations import OptimizationResult, OptimizationSpec, Scores, TrainingExample
from core.settings import Settings
from program.optimize import artifact
from program.schemas import signature_schemas
from worker.capacity import Capacity
from worker.job_store import JobStore
from worker.lm_gate import CallScope, call_scope
from worker.optimizers import build_candidate, chosen_metric
from worker.runs import Run, waiting_event
from worker.runtime import LoadedProgram, Runtime
from worker.streaming import RunSync, predict

log = logging.getLogger(__name__)

# Progress events from the calls of one optimization come at most this often.
_PROGRESS_EVERY_S = 0.5


class OptimizationStopped(BaseException):
    """The job is no longer this worker's (cancelled, or taken over): its next LM call is refused.

    A BaseException, like a cancellation: DSPy's optimizers catch `Exception` per example and carry on.
    """


class _OverBudget(BaseException):
    """Raised at the call past the budget, in whichever thread makes it (a BaseException, as above)."""


class BudgetExhausted(Exception):
    """The optimization needed more LM calls than its budget."""


class _Calls:
    """The job's LM calls: counted, refused past the budget or once the job was stopped, reported now and then."""

    def __init__(self, run: Run, budget: int, report: Callable[[], None]) -> None:
        self._run = run
        self._budget = budget
        self._report = report
        self._lock = threading.Lock()
        self.made = 0

    def before_call(self) -> None:
        if self._run.stop is not None:
            raise OptimizationStopped(self._run.stop)
        with self._lock:
            if self.made >= self._budget:
                raise _OverBudget(self._budget)
            self.made += 1
        self._report()


class Optimizations:
    def __init__(
        self,
        settings: Settings,
        client: aioredis.Redis,
        runtime: Runtime,
        capacity: Capacity,
        store: JobStore,
        run_sync: RunSync,
    ) -> None:
        self._settings = settings
        self._redis = client
        self._runtime = runtime
        self._capacity = capacity
        self._store = store
        self._run_sync = run_sync

    async def run(self, run: Run) -> OptimizationResult:
        spec = OptimizationSpec.model_validate_json(run.fields["optimization"])
        name = run.fields["program"]
        loop = asyncio.get_running_loop()
        phase: dict[str, Any] = {"phase": "starting", "done": 0, "total": 0}
        last_report = [0.0]

        def report() -> None:
            now = time.monotonic()
            if now - last_report[0] >= _PROGRESS_EVERY_S:
                last_report[0] = now
                asyncio.run_coroutine_threadsafe(self._progress(run, phase, calls.made), loop)

        calls = _Calls(run, spec.budget_calls, report)

        async def on_wait(reason: str, paused_until: float | None) -> None:
            await self._store.emit(
                run.job_id,
                run.token,
                EventType.status,
                waiting_event(run, reason, paused_until, self._settings.lm_model),
            )

        scope = CallScope(
            run.priority,
            run.slot,
            time.monotonic() + self._settings.optimization_time_limit_s,
            on_wait,
            lambda: 0,
            before_call=calls.before_call,
        )
        run.slot = None
        call_scope.set(scope)
        try:
            return await self._optimize(run, spec, name, phase, calls)
        except _OverBudget as e:
            raise BudgetExhausted(
                f"the optimization needed more than its budget of {spec.budget_calls} LM calls (phase {phase['phase']})"
            ) from e
        finally:
            if scope.reserved is not None:
                await asyncio.shield(self._capacity.release(scope.reserved, "unused"))

    async def _optimize(
        self, run: Run, spec: OptimizationSpec, name: str, phase: dict[str, Any], calls: _Calls
    ) -> OptimizationResult:
        current = await self._current(name, spec.current_version)
        pairs = [(_example(e), e) for e in spec.examples]
        shuffled = random.Random(spec.seed).sample(pairs, len(pairs))
        held = min(len(pairs) - 1, max(1, round(len(pairs) * spec.holdout)))
        holdout, train = shuffled[:held], shuffled[held:]
        judged = {id(example): e.judged for example, e in pairs}
        metric = chosen_metric(spec.metric, self._runtime.metric(name), lambda ex: judged.get(id(ex), []))
        with dspy.context(lm=self._runtime.lm(), adapter=self._runtime.adapter(), disable_history=True):
            phase.update(phase="building", done=0, total=len(train))
            await self._progress(run, phase, calls.made)
            built = await self._run_sync(
                _logged_stop(run.job_id, build_candidate),
                spec.optimizer,
                current.module,
                [example for example, _ in train],
                metric,
                spec.demos,
                spec.budget_calls,
                spec.seed,
            )
            scores = Scores(
                candidate=await self._score(run, built, current, holdout, metric, phase, calls, "scoring candidate"),
                current=await self._score(
                    run, current.module, current, holdout, metric, phase, calls, "scoring current"
                ),
            )
        version = await self._register(run, name, built, current, spec, train, holdout, scores, calls.made)
        return OptimizationResult(
            candidate_version=version,
            current_version=current.version,
            optimizer=spec.optimizer,
            metric=spec.metric,
            train_jobs=[e.job_id for _, e in train],
            holdout_jobs=[e.job_id for _, e in holdout],
            scores=scores,
            lm_calls=calls.made,
            budget_calls=spec.budget_calls,
        )

    async def _current(self, name: str, version: str | None) -> LoadedProgram:
        if version is not None:
            found = self._runtime.loaded_version(name, version)
            return found if found is not None else await asyncio.to_thread(self._runtime.version, name, version)
        found = self._runtime.current(name)
        return found if found is not None else await asyncio.to_thread(self._runtime.program, name)

    async def _score(
        self,
        run: Run,
        module: dspy.Module,
        loaded: LoadedProgram,
        holdout: list[tuple[dspy.Example, TrainingExample]],
        metric: Callable[..., float],
        phase: dict[str, Any],
        calls: _Calls,
        name: str,
    ) -> float:
        """The mean score of `module`'s answers to the held-out inputs; an answer that fails scores 0."""
        total = 0.0
        for done, (example, source) in enumerate(holdout):
            phase.update(phase=name, done=done, total=len(holdout))
            await self._progress(run, phase, calls.made)
            try:
                prediction = await predict(module, loaded.inputs(source.input), _ignore, False, self._run_sync)
                total += float(await self._run_sync(metric, example, prediction, None))
            except Exception:  # a wrong answer, as far as the score goes
                continue
        return round(total / len(holdout), 4)

    async def _register(
        self,
        run: Run,
        name: str,
        built: dspy.Module,
        current: LoadedProgram,
        spec: OptimizationSpec,
        train: list[tuple[dspy.Example, TrainingExample]],
        holdout: list[tuple[dspy.Example, TrainingExample]],
        scores: Scores,
        lm_calls: int,
    ) -> str:
        program_spec = self._runtime.spec(name)
        metadata = {
            "program": name,
            "module": program_spec.entry.module,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "lm_model": self._settings.lm_model,
            "optimizer": spec.optimizer,
            "demos": spec.demos,
            "trainset": f"{len(train)} jobs vouched for by feedback",
            "train_jobs": [e.job_id for _, e in train],
            "holdout_jobs": [e.job_id for _, e in holdout],
            "metric": spec.metric,
            "holdout_scores": scores.model_dump(),
            "parent_version": current.version,
            "optimization": run.job_id,
            "lm_calls": lm_calls,
            "dspy_version": dspy.__version__,
            "signature": signature_schemas(name, program_spec.signature(built)),
        }
        if program_spec.entry.mlflow_uri is not None:
            return await asyncio.to_thread(self._log_to_mlflow, name, program_spec.entry.mlflow_uri, built, metadata)
        state = await asyncio.to_thread(artifact, built, metadata)
        on_disk = await asyncio.to_thread(self._runtime.program, name)
        return await program_versions.register(self._redis, name, state, on_disk.version)

    def _log_to_mlflow(self, name: str, uri: str, built: dspy.Module, metadata: dict[str, Any]) -> str:
        """A program from MLflow gets its candidate as a new version of its registered model, under the
        `candidate` alias (blocking: MLflow's client). Outside the job's `dspy.context`: MLflow saves dspy's
        settings with the model, and the job's LM (gated by this process's capacity) is no one else's."""
        import mlflow
        import mlflow.dspy

        model_name = parse_mlflow_uri(uri).model_name
        if model_name is None:
            raise ValueError(f"{uri} is a run's model: there is no registered model to add a version to")
        mlflow.set_experiment(self._settings.mlflow_tracing_experiment)
        with mlflow.start_run(run_name=f"optimization {metadata['optimization']}"):
            mlflow.log_params({k: metadata[k] for k in ("optimizer", "demos", "metric", "parent_version")})
            scores = metadata["holdout_scores"]
            mlflow.log_metrics({"holdout_candidate": scores["candidate"], "holdout_current": scores["current"]})
            # Named, not inferred: inferring requirements loads the model in a subprocess, for seconds.
            requirements = [f"dspy=={dspy.__version__}"]
            logged = mlflow.dspy.log_model(
                built, name=name, registered_model_name=model_name, pip_requirements=requirements
            )
        number = str(logged.registered_model_version)
        mlflow.MlflowClient().set_registered_model_alias(model_name, CANDIDATE_ALIAS, number)
        log.info("logged the candidate of %s as %s version %s (@%s)", name, model_name, number, CANDIDATE_ALIAS)
        return version_uri(model_name, number)

    async def _progress(self, run: Run, phase: dict[str, Any], lm_calls: int) -> None:
        seq = await self._store.emit(
            run.job_id, run.token, EventType.status, {"status": "optimizing", **phase, "lm_calls": lm_calls}
        )
        if seq < 0:  # cancelled, or another worker's now
            run.stop = run.stop or "cancelled"


def _logged_stop(job_id: str, build: Callable[..., dspy.Module]) -> Callable[..., dspy.Module]:
    """`build`, saying so when it stops at a call: its job was cancelled, and nobody awaits the thread any more."""

    def stopping(*args: Any) -> dspy.Module:
        try:
            return build(*args)
        except OptimizationStopped as e:
            log.info("optimization %s stopped before an LM call (%s); nothing is registered", job_id, e)
            raise

    return stopping


def _example(source: TrainingExample) -> dspy.Example:
    return dspy.Example(**source.input, **source.label).with_inputs(*source.input)


def _ignore(field: str, text: str) -> None:
    """Token text of a held-out answer: nobody follows it."""
