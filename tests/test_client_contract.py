"""The Python client agrees with the server on what crosses between them: statuses and what ends them.

The client imports nothing of the server (tests/test_client_imports.py), so
it keeps its own enums; this notices when the two drift apart. The schema
reader is one for both (dspy_jobs_client.schemas, used by api/program_models.py).
"""

from dspy_jobs_client import records

from core.batches import TERMINAL_BATCH_STATUSES, BatchStatus
from core.jobs import TERMINAL_STATUSES, JobStatus


def test_the_clients_job_statuses_are_the_servers() -> None:
    assert [s.value for s in records.JobStatus] == [s.value for s in JobStatus]
    assert {s.value for s in records.JobStatus if s.is_terminal} == {s.value for s in TERMINAL_STATUSES}


def test_the_clients_batch_statuses_are_the_servers() -> None:
    assert [s.value for s in records.BatchStatus] == [s.value for s in BatchStatus]
    assert {s.value for s in records.BatchStatus if s.is_terminal} == {s.value for s in TERMINAL_BATCH_STATUSES}
