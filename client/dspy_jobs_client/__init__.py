"""Client for a dspy-jobs service: submit jobs and batches, stream their tokens, use a served program as a
`dspy.Module` (`RemoteProgram`, with the `dspy` extra), verify webhooks. See docs/client.md.

`RemoteProgram` is imported on first use, so `import dspy_jobs_client` works without dspy installed.
"""

from typing import TYPE_CHECKING, Any

from dspy_jobs_client.batches import AsyncBatch, Batch
from dspy_jobs_client.client import AsyncClient, Client
from dspy_jobs_client.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequest,
    BatchTimeout,
    Conflict,
    DspyJobsError,
    InvalidRequest,
    JobCancelled,
    JobError,
    JobExpired,
    JobFailed,
    JobTimeout,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    StreamInterrupted,
    WebhookVerificationError,
)
from dspy_jobs_client.events import ErrorEvent, JobEvent, ResultEvent, StatusEvent, TokenEvent, Transcript
from dspy_jobs_client.feedback import FeedbackEntry, JobFeedback, VersionFeedback
from dspy_jobs_client.jobs import AsyncJob, Job
from dspy_jobs_client.records import (
    BatchCounts,
    BatchItemResult,
    BatchRecord,
    BatchStatus,
    JobFailure,
    JobRecord,
    JobStatus,
    ProgramInfo,
    Usage,
)
from dspy_jobs_client.submissions import BatchItem, JobOptions, SubmitOptions
from dspy_jobs_client.versions import OptimizationRecord, ReplayRecord, RolloutRecord, VersionRecord
from dspy_jobs_client.webhooks import WebhookEvent, verify_webhook

if TYPE_CHECKING:
    from dspy_jobs_client.remote import RemoteProgram


def __getattr__(name: str) -> Any:
    if name == "RemoteProgram":
        from dspy_jobs_client.remote import RemoteProgram

        return RemoteProgram
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "APIConnectionError",
    "APIError",
    "AsyncBatch",
    "AsyncClient",
    "AsyncJob",
    "AuthenticationError",
    "BadRequest",
    "Batch",
    "BatchCounts",
    "BatchItem",
    "BatchItemResult",
    "BatchRecord",
    "BatchStatus",
    "BatchTimeout",
    "Client",
    "Conflict",
    "DspyJobsError",
    "ErrorEvent",
    "FeedbackEntry",
    "InvalidRequest",
    "Job",
    "JobCancelled",
    "JobError",
    "JobEvent",
    "JobExpired",
    "JobFailed",
    "JobFailure",
    "JobFeedback",
    "JobOptions",
    "JobRecord",
    "JobStatus",
    "JobTimeout",
    "NotFound",
    "OptimizationRecord",
    "PayloadTooLarge",
    "ProgramInfo",
    "RateLimited",
    "RemoteProgram",
    "ReplayRecord",
    "ResultEvent",
    "RolloutRecord",
    "ServerError",
    "ServiceUnavailable",
    "StatusEvent",
    "StreamInterrupted",
    "SubmitOptions",
    "TokenEvent",
    "Transcript",
    "Usage",
    "VersionFeedback",
    "VersionRecord",
    "WebhookEvent",
    "WebhookVerificationError",
    "verify_webhook",
]
