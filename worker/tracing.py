"""MLflow traces of jobs (MLFLOW_TRACING=true; off by default).

Each attempt of a job runs inside a root span named after its program,
tagged with the job id (`dspy_jobs.job_id`, also the trace's client request
id), the program and its version; the job's record keeps the trace id
(`trace_id`). DSPy's own calls (modules, the LM, the adapter's formatting
and parsing, tools) become its child spans through a DSPy callback given to
that job's `dspy.context`.

Not `mlflow.dspy.autolog()`: it installs MLflow's callback with
`dspy.configure` (and patches dspy's optimizers), and a worker never
configures dspy. MLflow's callback (`mlflow.dspy.callback.MlflowCallback`)
records nothing unless autolog was called, so the callback here is our own,
on DSPy's public callback interface and MLflow's public span API. MLflow
exports traces in the background (its async trace logging): a slow or
unreachable tracking server holds up no job, and what it could not take is
lost with MLflow's warning in the log.

Traces go to the experiment MLFLOW_TRACING_EXPERIMENT on MLFLOW_TRACKING_URI,
set when the worker starts; a worker that could not reach the server then
retries on its MLflow refresh (worker/engine.py), and traces nothing until
it has.
"""

import contextvars
import json
import logging
import os
from types import TracebackType
from typing import TYPE_CHECKING, Any

import dspy
from dspy.utils.callback import BaseCallback

from core.settings import Settings

if TYPE_CHECKING:
    from mlflow.entities import LiveSpan

log = logging.getLogger(__name__)

JOB_ID_TAG = "dspy_jobs.job_id"


def _json_ready(value: Any) -> Any:
    if isinstance(value, dspy.Prediction):
        return dict(value.items())
    return value


class _Spans(BaseCallback):
    """One job's DSPy calls as MLflow spans under the job's root span.

    The parent of a new span is the innermost span open in the caller's context (a context variable,
    so concurrent calls of one job, in tasks or threads, nest where they were made).
    """

    def __init__(self, root: "LiveSpan") -> None:
        self._parent: contextvars.ContextVar[LiveSpan] = contextvars.ContextVar("dspy_jobs_span", default=root)
        self._open: dict[str, tuple[LiveSpan, contextvars.Token[LiveSpan]]] = {}

    def _start(self, call_id: str, name: str, span_type: str, inputs: Any, attributes: dict[str, Any]) -> None:
        import mlflow

        span = mlflow.start_span_no_context(
            name=name,
            span_type=span_type,
            parent_span=self._parent.get(),
            inputs={key: _json_ready(value) for key, value in inputs.items() if key != "self"},
            attributes=attributes,
        )
        self._open[call_id] = (span, self._parent.set(span))

    def _end(self, call_id: str, outputs: Any, exception: BaseException | None) -> None:
        from mlflow.entities import SpanEvent, SpanStatusCode

        found = self._open.pop(call_id, None)
        if found is None:
            return
        span, token = found
        if exception is not None:
            span.add_event(SpanEvent.from_exception(exception))  # type: ignore[arg-type]
        span.end(outputs=_json_ready(outputs), status=SpanStatusCode.ERROR if exception else SpanStatusCode.OK)
        self._parent.reset(token)

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._start(call_id, f"{type(instance).__name__}.forward", "CHAIN", inputs, {})

    def on_module_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        self._end(call_id, outputs, exception)

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        attributes = {"model": getattr(instance, "model", None), "mlflow.message.format": "dspy"}
        self._start(call_id, f"{type(instance).__name__}.__call__", "CHAT_MODEL", inputs, attributes)

    def on_lm_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        self._end(call_id, outputs, exception)

    def on_adapter_format_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._start(call_id, f"{type(instance).__name__}.format", "PARSER", inputs, {})

    def on_adapter_format_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        self._end(call_id, outputs, exception)

    def on_adapter_parse_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._start(call_id, f"{type(instance).__name__}.parse", "PARSER", inputs, {})

    def on_adapter_parse_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        self._end(call_id, outputs, exception)

    def on_tool_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._start(call_id, f"Tool.{getattr(instance, 'name', 'call')}", "TOOL", inputs, {})

    def on_tool_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        self._end(call_id, outputs, exception)


class JobTrace:
    """One attempt's trace: a context manager around the program's call; inert when tracing is off."""

    def __init__(self, tracing: "JobTracing | None", job_id: str, program: str, version: str | None) -> None:
        self._tracing = tracing
        self._job_id = job_id
        self._program = program
        self._version = version
        self._span_cm: Any = None
        self._root: LiveSpan | None = None
        self._callbacks: list[BaseCallback] = []
        self.trace_id: str | None = None

    @property
    def callbacks(self) -> list[BaseCallback]:
        """For the job's `dspy.context`: none when it is not traced."""
        return self._callbacks

    @property
    def fields(self) -> dict[str, str]:
        """What the job's record gets from it."""
        return {"trace_id": self.trace_id} if self.trace_id else {}

    def set_io(self, input_json: str, outputs: dspy.Prediction) -> None:
        """The job's input as submitted, and the program's output, on the root span."""
        if self._root is not None:
            self._root.set_inputs(json.loads(input_json))
            self._root.set_outputs(_json_ready(outputs))

    def __enter__(self) -> "JobTrace":
        if self._tracing is None:
            return self
        import mlflow

        tags = {JOB_ID_TAG: self._job_id, "dspy_jobs.program": self._program}
        if self._version is not None:
            tags["dspy_jobs.program_version"] = self._version
        try:
            self._span_cm = mlflow.start_span(name=self._program, span_type="CHAIN", attributes=tags)
            root = self._span_cm.__enter__()
            mlflow.update_current_trace(tags=tags, client_request_id=self._job_id)
        except Exception as e:
            # A trace is worth less than the job: run it untraced.
            log.warning("job %s: not traced: %s", self._job_id, e)
            self._span_cm = None
            return self
        # A no-op span (tracing disabled by MLflow itself) has no trace to name.
        trace_id = getattr(root, "trace_id", None)
        if trace_id and getattr(root, "span_id", None):
            self._root, self.trace_id = root, str(trace_id)
            self._callbacks = [_Spans(root)]
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._span_cm is not None:
            try:
                self._span_cm.__exit__(kind, error, tb)
            except Exception as e:
                if e is not error:
                    log.warning("job %s: its trace could not be closed: %s", self._job_id, e)


class JobTracing:
    """One per worker process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.enabled = settings.mlflow_tracing
        self.ready = False
        if self.enabled and not settings.mlflow_tracking_uri:
            log.warning("MLFLOW_TRACING is on but MLFLOW_TRACKING_URI is not set: jobs are not traced")
            self.enabled = False

    def start(self) -> None:
        """Point MLflow's tracing at the experiment (a request to the tracking server); never raises."""
        if not self.enabled or self.ready:
            return
        assert self._settings.mlflow_tracking_uri is not None
        # Configured as the program loader does (tracking URI, timeouts, no telemetry), in one place.
        from worker.mlflow_loader import configure_mlflow

        configure_mlflow(self._settings, self._settings.mlflow_tracking_uri)
        try:
            import mlflow

            experiment = mlflow.set_experiment(self._settings.mlflow_tracing_experiment)
        except Exception as e:
            log.warning("MLflow tracing not started yet (retried later): %s", e)
            return
        self.ready = True
        log.info(
            "tracing jobs to MLflow experiment %s (%s) at %s (pid %s)",
            experiment.name,
            experiment.experiment_id,
            self._settings.mlflow_tracking_uri,
            os.getpid(),
        )

    def job(self, job_id: str, program: str, version: str | None) -> JobTrace:
        return JobTrace(self if self.ready else None, job_id, program, version)
