"""The one settings object, read from the environment (and `.env`).

Every process (API, worker, Flower launcher, tests) builds its configuration
from `Settings`; nothing else reads environment variables. Names carry their
unit (`_s` seconds, `_chars`, `_bytes`).
"""

import os
from functools import lru_cache
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.programs import ProgramEntry
from core.webhooks import secret_problem

# The embedded default: llama.cpp's OpenAI-compatible server (stack/embedded_lm.py)
# serving Gemma 3 270M. `make up` starts it when `lm_model` is left at this value.
EMBEDDED_LM_MODEL = "openai/gemma-3-270m"
EMBEDDED_LM_API_BASE = "http://127.0.0.1:8080/v1"


class ModelLimits(BaseModel):
    """Capacity of one model's endpoint (core/capacity.py); an unset limit is no limit, or the default."""

    model_config = ConfigDict(extra="forbid")

    max_in_flight: PositiveInt | None = Field(None, description="LM calls in flight at once, from every worker.")
    rpm: PositiveInt | None = Field(None, description="Requests per minute.")
    tpm: PositiveInt | None = Field(None, description="Tokens per minute, prompt and completion.")


class Settings(BaseSettings):
    # A mistyped secret must not be echoed in the start-up error.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", hide_input_in_errors=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    # --- Redis high availability (core/redis_clients.py, docs/operations.md) --
    # "host:port,host:port": every client asks these Sentinels for the primary
    # named `redis_master_name`; REDIS_URL then gives only the database number
    # (and TLS, with rediss://).
    redis_sentinels: Annotated[list[str], NoDecode] = []
    redis_master_name: str = "dspy-jobs"
    # Password of the primary and replicas (else REDIS_URL's), and of the Sentinels.
    redis_password: SecretStr | None = None
    redis_sentinel_password: SecretStr | None = None
    # Replicas that must hold a write before the API answers 202 for it (and a
    # worker counts a result as stored): unset means 1 with Sentinels, 0 without.
    redis_min_replicas_acked: int | None = Field(None, ge=0)
    redis_replica_ack_timeout_s: float = Field(1.0, gt=0)
    # How long a worker's Redis command keeps being retried while Redis does not
    # answer (a failover: Sentinel's down-after time plus the promotion), so a
    # running job's tokens and result wait for the new primary instead of being
    # lost and the job run again. The API does not wait: it answers 503 at once.
    worker_redis_retry_s: float = Field(10.0, ge=0)

    # --- Local stack (`make up`) -------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    flower_port: int = 5555
    # `maxmemory` of the Redis `make up` starts (docker-compose passes the same
    # variable to its Redis); the API refuses submissions above
    # REDIS_HIGH_WATER of it, so Redis never refuses a running job's result.
    redis_maxmemory: str = "2gb"
    # "user:password" for Flower; `make up` generates one when empty.
    flower_basic_auth: SecretStr | None = None

    # --- LM -----------------------------------------------------------------
    lm_model: str = Field(
        EMBEDDED_LM_MODEL,
        description="Any DSPy/LiteLLM model string, e.g. openai/gpt-4o-mini.",
    )
    lm_api_base: str | None = EMBEDDED_LM_API_BASE
    lm_api_key: SecretStr | None = None
    lm_temperature: float = 0.0
    # Every request stops at DSPy's completion marker or this many tokens: the
    # embedded base model otherwise rambles to its context limit.
    lm_max_tokens: int = 384
    lm_timeout_s: float = 60.0
    # Retries happen per job (visible as attempts and `retrying` events, with
    # backoff that honours Retry-After), not hidden inside one LM call.
    lm_num_retries: int = 0
    lm_cache: bool = True
    # Which client DSPy uses. "auto": its native engine where it knows the
    # provider, LiteLLM otherwise; the native engine costs a streaming job
    # well under half of LiteLLM's worker CPU.
    # Unset means "auto", except for the embedded LM: llama.cpp's server
    # reports no token usage when streaming, and LiteLLM counts the tokens
    # itself, so jobs there still say what they spent.
    lm_engine: Literal["litellm", "auto", "lm15"] | None = None
    # DSPy's adapter (program/lm.py): `chat` (field headers, streamed as written),
    # `json` (the signature's JSON schema as a structured output: a server that
    # constrains decoding to it can only write output that parses), or `auto`:
    # `json` for the embedded model, `chat` for any other.
    lm_adapter: Literal["auto", "chat", "json"] = "auto"
    # Models a request may name in `model`. Empty means only `lm_model`: a
    # caller must not be able to spend the operator's key on any model it likes.
    lm_allowed_models: Annotated[list[str], NoDecode] = []

    # --- The embedded LM (stack/embedded_lm.py) ---------------------------------
    # Sequences its server decodes at once (llama.cpp's slots); the embedded
    # model's LM_MAX_IN_FLIGHT follows it. Chosen by measurement
    # (`python -m bench.embedded`, BENCHMARKS.md): revisit it there.
    embedded_lm_slots: PositiveInt = 4
    # CPU threads of that server, for all its slots together. Unset: one per
    # CPU this process may run on.
    embedded_lm_threads: PositiveInt | None = None

    # --- LM capacity (core/capacity.py) ------------------------------------------
    # The calls every worker together may have in flight against LM_MODEL's
    # endpoint. Unset: EMBEDDED_LM_SLOTS for the embedded model, 1024 for any
    # other (a hosted provider's own limits come back as 429s, which pause
    # the model for every worker).
    lm_max_in_flight: PositiveInt | None = None
    # Requests and tokens per minute for LM_MODEL. Unset: none. Tokens are
    # estimated before a call (prompt characters / 4 + LM_MAX_TOKENS) and
    # corrected with the usage the provider reports.
    lm_rpm: PositiveInt | None = None
    lm_tpm: PositiveInt | None = None
    # The same per model, for any model of LM_MODEL and LM_ALLOWED_MODELS, as
    # JSON: {"openai/gpt-4o": {"max_in_flight": 8, "rpm": 500, "tpm": 30000}};
    # it wins over the three above for LM_MODEL.
    lm_limits: dict[str, ModelLimits] = {}
    # The share of each model's slots that bulk work leaves to interactive
    # jobs, rounded down but at least one of two or more (core/capacity.py);
    # 0 reserves none. On a one-slot model an interactive job waits at most
    # for the call in progress, because waiting interactive jobs go first.
    lm_interactive_reserve: float = Field(0.1, ge=0.0, lt=1.0)
    # Consecutive failed calls (server errors, timeouts, connection errors)
    # after which a model is paused for every worker, from RETRY_BASE_S
    # doubling up to RETRY_MAX_S, then tried with one call before the rest.
    lm_breaker_failures: PositiveInt = 5

    # --- Programs (core/programs.py) ------------------------------------------
    # The program `/jobs` and `/batches` run; `/programs/{name}/...` reach every one.
    default_program: str = "qa"
    artifacts_dir: str = "artifacts"
    # More programs, or other settings for built-in ones: a TOML file with one
    # table per program, read when it exists ...
    programs_file: str | None = "programs.toml"
    # ... and JSON (`{"name": {"module": "pkg.mod:Class"}}`), which wins over the file.
    programs: dict[str, ProgramEntry] = {}

    # --- Programs from MLflow (worker/mlflow_loader.py, docs/programs.md) --------
    # The tracking server (and model registry) entries with `mlflow_uri` are
    # resolved against, e.g. http://mlflow:5000. Unset: such programs are
    # unavailable, with that reason; the others are served as usual.
    mlflow_tracking_uri: str | None = None
    # A logged DSPy model is a pickle (MLflow's `.pkl`, or dspy's
    # `save_program=True` directory): loading one runs code from the registry.
    # Workers load them only when this is true, MLflow's own variable for the
    # same trust; otherwise the program is unavailable and says so.
    mlflow_allow_pickle_deserialization: bool = False
    # How often a worker asks the tracking server where each alias points now
    # (and retries a program that could not be loaded); never once per job.
    mlflow_refresh_s: float = Field(10.0, gt=0)
    # One request to the tracking server, and how often a failed one is
    # retried (the workers set MLflow's MLFLOW_HTTP_REQUEST_TIMEOUT and
    # MLFLOW_HTTP_REQUEST_MAX_RETRIES from these: MLflow's defaults retry for
    # minutes, while a worker starts and refreshes with them).
    mlflow_timeout_s: PositiveInt = 10
    mlflow_max_retries: int = Field(0, ge=0, le=10)
    # Trace each job's DSPy call to MLflow (MLFLOW_TRACKING_URI), into this
    # experiment; the job's record then names its trace (`trace_id`).
    mlflow_tracing: bool = False
    mlflow_tracing_experiment: str = "dspy-jobs"

    # --- Jobs -----------------------------------------------------------------
    job_ttl_s: int = 7 * 24 * 3600
    # Every text in a job's input, anywhere in it. QUESTION_MAX_CHARS, its
    # name from when `qa` was the only program, still works.
    input_max_chars: int = Field(4000, validation_alias=AliasChoices("input_max_chars", "question_max_chars"))
    wait_max_s: float = 60.0
    event_stream_maxlen: int = 10_000
    # Request bodies: batches get their own, larger limit.
    request_max_bytes: int = 1024 * 1024
    batch_max_bytes: int = 64 * 1024 * 1024
    batch_max_items: int = 100_000
    batch_progress_interval_s: float = 0.5
    batch_results_page_max: int = 1000
    sse_ping_s: float = 15.0
    # A streaming job's first token is written at once, the next ones at most
    # this often, joined (worker/token_writer.py): far fewer events for the
    # same text. 0: every chunk of the LM is its own event.
    token_coalesce_s: float = Field(0.03, ge=0.0, le=1.0)
    # A client that cannot take an event within this long is disconnected
    # (it can resume with Last-Event-ID); it never slows anyone else.
    sse_send_timeout_s: float = 30.0

    # Deadlines: a job (or batch item) that has not started this long after
    # it was submitted ends `expired` and never runs. A request may ask for
    # its own (`expires_after_s`, at most `job_ttl_s`).
    job_expires_after_s: float = Field(600.0, gt=0)
    batch_expires_after_s: float = Field(24 * 3600.0, gt=0)

    # --- Feedback and program versions (api/feedback.py, docs/feedback.md) --------
    # Feedback entries one job may hold (each its own POST /jobs/{id}/feedback).
    feedback_max_per_job: PositiveInt = 50
    # An optimization job (POST /programs/{name}/optimizations) that runs longer fails; nothing is registered.
    optimization_time_limit_s: PositiveInt = 3600
    # How often each worker judges the canaries that asked for the automatic rollback rule.
    rollout_guard_interval_s: float = Field(5.0, gt=0)

    # --- Queues and workers ---------------------------------------------------
    # How many interactive jobs one worker process takes from its queue while
    # they wait for LM capacity (Celery's threads). Running jobs do not hold
    # one: they run on the process's event loop, as many as the LM's limits
    # let start (worker/engine.py).
    worker_concurrency: PositiveInt = 8
    # Interactive worker processes `make up` starts. A process runs its Python
    # on one core at a time, and at the LM's pace a streaming job's CPU is
    # what limits one process (BENCHMARKS.md). None: one per core this
    # machine gives the service.
    worker_processes: PositiveInt | None = None
    interactive_queue: str = "interactive"
    bulk_queue: str = "bulk"
    worker_heartbeat_s: float = 5.0
    # A worker whose last heartbeat is older than this counts as offline.
    worker_offline_after_s: float = 15.0
    # Hard limit on one job; the broker's visibility timeout is derived from it
    # so a long job is never redelivered while it still runs.
    # A streaming job is stopped (failed, code 504) once it runs this long; a
    # single silent LM call is bounded by `lm_timeout_s` instead.
    job_time_limit_s: int = 600
    # Attempts that ended with an outcome: a retryable failure (an LM error, a
    # timeout) is tried again until the job has made this many, then it fails
    # with that error. Attempts whose worker was lost count toward the next.
    job_max_attempts: int = 5
    # Deliveries that ended without any report: the worker running the job
    # died (killed, out of memory, crashed) or stalled past its lease. The
    # reaper that finds the last of these lost ends the job `failed`,
    # `DeadLettered` (code 508), so a job that kills its worker every time is
    # not delivered again (core/lua/jobs.lua `job_requeue_lost`). A job's last
    # delivery runs alone in its worker (worker/isolation.py), so at least 2:
    # with 1, every job would.
    job_max_deliveries: int = Field(3, ge=2)
    # A running job's worker renews its lease every `job_lease_s / 3`; a lease
    # that runs out means the worker is gone and the job is requeued.
    job_lease_s: float = 15.0
    reaper_interval_s: float = 2.0
    # A job still `queued` this long after its message was taken from the
    # queue, with no worker holding that message, lost it (a worker was
    # killed between taking it and starting the job): it is enqueued again,
    # whether or not newer jobs still wait in the queue (worker/reaper.py).
    queued_lost_after_s: float = 10.0
    retry_base_s: float = 1.0
    retry_max_s: float = 60.0
    # Celery's task events (sent, received, started, succeeded...), from which
    # Flower shows tasks and counts them per worker. Off, Flower still lists
    # the workers (their heartbeats and remote control are separate) and our
    # own records and /metrics are unchanged; the worker saves a Redis
    # publish every few jobs (bench/results/no_task_events.md).
    task_events: bool = True
    idempotency_ttl_s: int = 24 * 3600
    api_redis_max_connections: int = 200
    api_redis_pool_timeout_s: float = 5.0

    # --- Completion webhooks (core/webhooks.py, worker/webhooks.py) -----------
    # Standard Webhooks signing secret, `whsec_` + base64 (`python -m api.auth
    # webhook-secret` makes one). Unset: `webhook_url` is refused.
    webhook_secret: SecretStr | None = None
    # One delivery attempt: connect, send, read the answer.
    webhook_timeout_s: float = Field(10.0, gt=0)
    # Failed attempts (timeouts, connection errors, non-2xx but 410) are retried
    # with exponential backoff and jitter until this long after the job or
    # batch ended.
    webhook_retry_window_s: float = Field(24 * 3600.0, gt=0)
    # Deliveries one worker process sends at once; a slow receiver holds one.
    webhook_concurrency: PositiveInt = 16
    # Of those, at most this many for one API key's deliveries (unset: half),
    # and for one receiver, a registrable domain whatever its subdomains and
    # ports (unset: a quarter), so no caller's slow receivers hold them all.
    webhook_key_max_in_flight: PositiveInt | None = None
    webhook_receiver_max_in_flight: PositiveInt | None = None
    # Receivers' names are looked up on this many threads of each process's
    # own (not the pool its heartbeat uses), each lookup within this long.
    webhook_dns_threads: PositiveInt = 4
    webhook_dns_timeout_s: float = Field(5.0, gt=0)
    # By default only https receivers on public addresses are accepted. These
    # open loopback and private ranges (and plain http) to every host, or to
    # the hosts listed (exact names or IP literals, comma-separated).
    webhook_allow_private: bool = False
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = []

    # --- Security and operations ------------------------------------------------
    # API keys, stored hashed: comma-separated sha256 hex digests of the keys,
    # each optionally named (`name:digest`); `python -m api.auth hash <key>`
    # prints one. Empty: the API is open, for local use only (`make up` warns).
    # A secret type even though it holds digests: a plain key pasted here by
    # mistake must not end up in a log or an error message (api/auth.py
    # validates it at startup without echoing it).
    api_keys: SecretStr | None = None
    # Operators' keys, in the same form: keys like the others that also see
    # every key's work, /metrics, and the deployment's details in /ready and
    # /models (`python -m api.auth new --admin`). Needs API_KEYS.
    api_admin_keys: SecretStr | None = None
    # Submissions (`POST /jobs`, `POST /batches`) per key: a token bucket that
    # refills at this rate and holds at most `key_submit_burst`. 0: unlimited.
    key_submit_rate_per_s: float = 0.0
    key_submit_burst: int = 20
    # Event streams (`/jobs/{id}/events`, `/batches/{id}/events`) open at once per key. 0: unlimited.
    key_max_sse_streams: int = 0
    # Items per batch for each key, below `batch_max_items`. 0: `batch_max_items`.
    key_batch_max_items: int = 0
    # How long a stream's (or a long poll's) slot outlives an API process that died holding it.
    sse_slot_lease_s: float = 60.0
    # What one key may keep in Redis (api/quotas.py); 0: no limit. Input bytes
    # it submitted within JOB_TTL_S (inputs are kept that long) ...
    key_max_stored_bytes: int = Field(512 * 1024 * 1024, ge=0)
    # ... batches that have not ended ...
    key_max_open_batches: int = Field(50, ge=0)
    # ... and batch items not started yet, across its batches.
    key_max_queued_items: int = Field(1_000_000, ge=0)
    # Requests of one key waiting at once for a job to end (`?wait`, `POST
    # /v1/chat/completions` without streaming). 0: unlimited, as event streams
    # are: one backend holding hundreds of waits is the common caller, and a
    # counted wait costs two Redis commands.
    key_max_long_polls: int = Field(0, ge=0)
    # How long an OpenAI-compatible batch file (uploaded, or an output or
    # error file) and batch are kept (POST /v1/files, POST /v1/batches).
    openai_file_ttl_s: int = Field(7 * 24 * 3600, gt=0)
    # Above this share of Redis' memory limit the API refuses new submissions
    # (503, Retry-After) while running jobs still finish and write their
    # results (api/redis_memory.py). The limit is Redis' `maxmemory`, or
    # REDIS_MEMORY_LIMIT_BYTES for a Redis that has none set.
    redis_high_water: float = Field(0.85, gt=0, le=1)
    redis_memory_limit_bytes: int | None = Field(None, gt=0)
    # Browser origins allowed to call the API (CORS), comma-separated, exact
    # (`https://app.example.com`). Empty: none. No wildcard: see api/main.py.
    cors_allow_origins: Annotated[list[str], NoDecode] = []
    # `text` (readable, the default) or `json` (one object per line).
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    # Questions, prompts and answers stay out of the logs unless this is true.
    log_payloads: bool = False
    # `/ready` asks the LM's `/models` with this timeout; reported, never fatal.
    ready_lm_timeout_s: float = 2.0
    # Patches of library internals to leave out, comma-separated names
    # (patches/__init__.py lists them; each is also skipped by itself, with a
    # warning, on a library version it was not written for).
    disabled_patches: Annotated[list[str], NoDecode] = []
    # Read by prometheus-client itself too: set it (to an empty directory,
    # cleared at each start) when the API runs several processes.
    prometheus_multiproc_dir: str | None = None

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            value = [o.strip() for o in value.split(",") if o.strip()]
        if isinstance(value, list) and "*" in value:
            raise ValueError("CORS_ALLOW_ORIGINS takes explicit origins, not '*'")
        return value

    @field_validator("webhook_secret", "mlflow_tracking_uri", "embedded_lm_threads", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # docker-compose passes an unset variable through as "".
        return None if value == "" else value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret_is_whsec(cls, value: SecretStr | None) -> SecretStr | None:
        problem = secret_problem(value.get_secret_value()) if value is not None else None
        if problem is not None:
            # Never echo the value: it is a secret.
            raise ValueError(
                f"WEBHOOK_SECRET is not a Standard Webhooks secret: {problem} (python -m api.auth webhook-secret)"
            )
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels_are_host_port(cls, value: list[str]) -> list[str]:
        for address in value:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"REDIS_SENTINELS: {address!r} is not host:port")
        return value

    @field_validator("lm_allowed_models", "disabled_patches", "redis_sentinels", "webhook_allowed_hosts", mode="before")
    @classmethod
    def _split_lists(cls, value: object) -> object:
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @model_validator(mode="after")
    def _limits_name_known_models(self) -> "Settings":
        unknown = sorted(set(self.lm_limits) - set(self.allowed_models))
        if unknown:
            raise ValueError(
                f"LM_LIMITS names {', '.join(unknown)}, which no job can use: neither LM_MODEL "
                f"({self.lm_model}) nor in LM_ALLOWED_MODELS"
            )
        return self

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(host.strip("[]"), int(port)) for host, _, port in (a.rpartition(":") for a in self.redis_sentinels)]

    @property
    def replicas_to_ack(self) -> int:
        if self.redis_min_replicas_acked is not None:
            return self.redis_min_replicas_acked
        return 1 if self.redis_sentinels else 0

    @property
    def allowed_models(self) -> list[str]:
        return [self.lm_model, *[m for m in self.lm_allowed_models if m != self.lm_model]]

    @property
    def effective_worker_processes(self) -> int:
        if self.worker_processes is not None:
            return self.worker_processes
        return usable_cores()

    @property
    def effective_lm_engine(self) -> str:
        if self.lm_engine is not None:
            return self.lm_engine
        return "litellm" if self.lm_model == EMBEDDED_LM_MODEL else "auto"

    @property
    def uses_embedded_lm(self) -> bool:
        """The embedded model served on this machine, where `make up` starts it (on LM_API_BASE's port)."""
        if self.lm_model != EMBEDDED_LM_MODEL or not self.lm_api_base:
            return False
        return urlsplit(self.lm_api_base).hostname in ("127.0.0.1", "localhost", "::1")


def usable_cores() -> int:
    """The cores this process may run on (its affinity, where the OS has one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


@lru_cache
def get_settings() -> Settings:
    return Settings()
