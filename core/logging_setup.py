"""Logging for every process: readable text or one JSON object per line, with the job in it.

- **Context**: the job id and batch id a line is about come from context
  variables, set where work on a job starts (the worker's task entry point,
  the API's routes), so every line logged while handling that job carries
  them without each call site passing them along. Celery's own lines about
  a task are given the task's job id too; its per-task "received" and
  "succeeded" lines only at DEBUG, where the worker's line per job says it.
- **Secrets**: every line goes through one filter on the handler that
  masks API keys however they were sent (`Authorization: Bearer`,
  `X-API-Key`, `?api_key=` in an access-log URL), the user information of
  any URL (core/redact.py), and the literal values of the secrets in the
  settings (the LM key, the Redis and Flower passwords).
- **Payloads**: questions and answers are user data; unless `LOG_PAYLOADS`
  is set, the current job's input values and the LM response text that
  DSPy puts in its parse errors are cut out of every line.

`LOG_FORMAT=json` switches the format; nothing else changes.
"""

import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

from core import redis_clients
from core.queue import RUN_JOB_TASK
from core.redact import without_credentials
from core.settings import Settings

job_id_var: ContextVar[str | None] = ContextVar("job_id", default=None)
batch_id_var: ContextVar[str | None] = ContextVar("batch_id", default=None)
# The current job's input values: cut out of log lines unless LOG_PAYLOADS.
payloads_var: ContextVar[tuple[str, ...]] = ContextVar("payloads", default=())

REDACTED = "[redacted]"
OMITTED = "[payload omitted; set LOG_PAYLOADS=true to log it]"
# The shortest input worth cutting out: shorter strings would mangle ordinary words.
_MIN_PAYLOAD_CHARS = 8

_KEY_PATTERNS = [
    # Any spelling a URL parser reads as `api_key` (`api%5Fkey=`, `%61pi_key=`), whether or not it was taken.
    (re.compile(r"(?i)((?:a|%61)(?:p|%70)(?:i|%69)(?:_|%5f)(?:k|%6b)(?:e|%65)(?:y|%79)=)[^&\s\"']+"), r"\1" + REDACTED),
    (re.compile(r"(?i)(bearer\s+)[^\s\"',]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)(x-api-key[\"']?\s*[:=]\s*[\"']?)[^\s\"',]+"), r"\1" + REDACTED),
]
# DSPy's AdapterParseError quotes the whole LM response between these.
_LM_RESPONSE = re.compile(r"(LM Response:).*?(\s*Expected to find|\Z)", re.S)


def batch_of(job_id: str) -> str | None:
    """The batch a job id belongs to: batch items are `<batch id>-<index>` (core/batches.item_id)."""
    batch_id, dash, index = job_id.rpartition("-")
    return batch_id if dash and index.isdigit() else None


@contextlib.contextmanager
def log_context(job_id: str | None = None, batch_id: str | None = None, payloads: Iterable[str] = ()) -> Iterator[None]:
    """Lines logged inside the block (in this thread or task) carry these ids."""
    job_token = job_id_var.set(job_id)
    batch_token = batch_id_var.set(batch_id or (batch_of(job_id) if job_id else None))
    payloads_token = payloads_var.set(tuple(p for p in payloads if len(p) >= _MIN_PAYLOAD_CHARS))
    try:
        yield
    finally:
        payloads_var.reset(payloads_token)
        batch_id_var.reset(batch_token)
        job_id_var.reset(job_token)


def bind(job_id: str | None = None, batch_id: str | None = None) -> None:
    """Set the ids for the rest of the current request: each request runs in its own context."""
    if job_id is not None:
        job_id_var.set(job_id)
        if batch_id is None:
            batch_id = batch_of(job_id)
    if batch_id is not None:
        batch_id_var.set(batch_id)


def _celery_task_id(record: logging.LogRecord) -> str | None:
    """The job id in Celery's own lines about a run_job task (`Task ...[<id>] received/succeeded`)."""
    for candidate in (getattr(record, "data", None), record.args):
        if isinstance(candidate, dict) and candidate.get("name") == RUN_JOB_TASK and candidate.get("id"):
            return str(candidate["id"])
    return None


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        job_id = getattr(record, "job_id", None) or job_id_var.get() or _celery_task_id(record)
        record.job_id = job_id
        batch_id = getattr(record, "batch_id", None) or batch_id_var.get()
        record.batch_id = batch_id or (batch_of(job_id) if job_id else None)
        return True


class RedactFilter(logging.Filter):
    """Renders the message once, masked; formatters then print it as it is."""

    def __init__(self, secrets: Iterable[str], log_payloads: bool) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._log_payloads = log_payloads

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        for pattern, replacement in _KEY_PATTERNS:
            text = pattern.sub(replacement, text)
        text = without_credentials(text)
        if not self._log_payloads:
            text = _LM_RESPONSE.sub(lambda m: f"{m.group(1)} {OMITTED}{m.group(2)}", text)
            for payload in payloads_var.get():
                text = text.replace(payload, OMITTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: log it as written rather than lose it
            message = str(record.msg)
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{name}={value}" for name in ("job_id", "batch_id") if (value := getattr(record, name, None))]
        if not ids:
            return line
        first, newline, rest = line.partition("\n")
        return f"{first} [{' '.join(ids)}]{newline}{rest}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for name in ("job_id", "batch_id"):
            if value := getattr(record, name, None):
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value the settings hold, to be masked wherever it shows up."""
    found = []
    for secret in (settings.lm_api_key, settings.flower_basic_auth, settings.webhook_secret):
        if secret is not None:
            value = secret.get_secret_value()
            found += [value, *value.split(":", 1)[1:]]  # user:password: the password alone too
    found += redis_clients.secrets(settings)
    return [s for s in found if len(s) >= 4]


def configure_logging(settings: Settings, level: str | int | None = None) -> None:
    """One handler on the root logger; the servers' own loggers go through it too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactFilter(secrets_of(settings), settings.log_payloads))
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if level is not None else settings.log_level.upper())
    # uvicorn's and celery's loggers print through their own handlers; send
    # them to ours instead so every line is formatted and masked the same way.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task", "celery.redirected"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
    if not settings.log_payloads:
        # Their debug output is whole prompts and responses.
        for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm", "httpx", "httpcore", "openai"):
            logging.getLogger(name).setLevel(max(logging.getLogger(name).level, logging.INFO))
    if root.level > logging.DEBUG:
        # Celery's "received" and "succeeded" lines per task repeat the worker's own line per job (its id,
        # outcome and times) and cost as much CPU each (BENCHMARKS.md); their failures are still logged.
        for name in ("celery.worker.strategy", "celery.app.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)
    # httpx logs each request's URL at INFO; a webhook receiver's URL may carry its own token.
    logging.getLogger("httpx").setLevel(max(logging.getLogger("httpx").level, logging.WARNING))
