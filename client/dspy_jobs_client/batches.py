"""A submitted batch: its progress, waiting for it, its results in order, cancelling it.

`results()` reads `GET /batches/{id}/results.ndjson`, one item per line in
submission order, as it arrives: a 100,000-item batch is never held in
memory. It returns every item as it stands when read; call `wait()` first
for final results.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import httpx

from dspy_jobs_client.errors import APIConnectionError, BatchTimeout
from dspy_jobs_client.http import AsyncTransport, SyncTransport
from dspy_jobs_client.polling import Deadline, poll_delays
from dspy_jobs_client.records import BatchItemResult, BatchRecord

# Batches take minutes to hours: asking every couple of seconds is plenty.
_POLL_MAX_S = 2.0


def _broke_off(batch_id: str, error: httpx.TransportError) -> APIConnectionError:
    # No cursor on the download: the caller starts it again.
    return APIConnectionError(f"the results download of batch {batch_id} broke off: {type(error).__name__}: {error}")


class Batch:
    def __init__(self, transport: SyncTransport, record: BatchRecord) -> None:
        self._transport = transport
        self.record = record

    @property
    def id(self) -> str:
        return self.record.id

    def __repr__(self) -> str:
        return f"Batch(id={self.id!r}, status={self.record.status.value!r}, total={self.record.counts.total})"

    def progress(self) -> BatchRecord:
        """The batch now (`GET /batches/{id}`): its status and `counts` of items by status."""
        self.record = BatchRecord.from_json(self._transport.json("GET", f"/batches/{self.id}", idempotent=True))
        return self.record

    def wait(self, timeout: float | None = None) -> BatchRecord:
        """The batch once every item has ended; `BatchTimeout` if it has not within `timeout` seconds."""
        deadline = Deadline(timeout)
        delays = poll_delays(max_s=_POLL_MAX_S)
        while not self.record.status.is_terminal:
            if deadline.passed:
                raise BatchTimeout(self.record, timeout or 0.0)
            time.sleep(deadline.sleep_s(next(delays)))
            self.progress()
        return self.record

    def results(self) -> Iterator[BatchItemResult]:
        """Every item's status and result or error, in submission order, streamed from the NDJSON download."""
        response = self._transport.send("GET", f"/batches/{self.id}/results.ndjson", idempotent=True, stream=True)
        try:
            for line in response.iter_lines():
                if line:
                    yield BatchItemResult.from_json(json.loads(line))
        except httpx.TransportError as e:
            raise _broke_off(self.id, e) from e
        finally:
            response.close()

    def cancel(self) -> BatchRecord:
        """Items not yet started never run; running ones finish. `Conflict` if the batch had already ended."""
        data = self._transport.json("POST", f"/batches/{self.id}/cancel", idempotent=False)
        self.record = BatchRecord.from_json(data)
        return self.record


class AsyncBatch:
    def __init__(self, transport: AsyncTransport, record: BatchRecord) -> None:
        self._transport = transport
        self.record = record

    @property
    def id(self) -> str:
        return self.record.id

    def __repr__(self) -> str:
        return f"AsyncBatch(id={self.id!r}, status={self.record.status.value!r}, total={self.record.counts.total})"

    async def progress(self) -> BatchRecord:
        """The batch now (`GET /batches/{id}`): its status and `counts` of items by status."""
        data = await self._transport.json("GET", f"/batches/{self.id}", idempotent=True)
        self.record = BatchRecord.from_json(data)
        return self.record

    # `timeout` as on the blocking handle, rather than asyncio.timeout around the call: running out raises
    # BatchTimeout, which carries the record.
    async def wait(self, timeout: float | None = None) -> BatchRecord:  # noqa: ASYNC109
        """The batch once every item has ended; `BatchTimeout` if it has not within `timeout` seconds."""
        deadline = Deadline(timeout)
        delays = poll_delays(max_s=_POLL_MAX_S)
        while not self.record.status.is_terminal:
            if deadline.passed:
                raise BatchTimeout(self.record, timeout or 0.0)
            await asyncio.sleep(deadline.sleep_s(next(delays)))
            await self.progress()
        return self.record

    async def results(self) -> AsyncIterator[BatchItemResult]:
        """Every item's status and result or error, in submission order, streamed from the NDJSON download."""
        response = await self._transport.send("GET", f"/batches/{self.id}/results.ndjson", idempotent=True, stream=True)
        try:
            async for line in response.aiter_lines():
                if line:
                    yield BatchItemResult.from_json(json.loads(line))
        except httpx.TransportError as e:
            raise _broke_off(self.id, e) from e
        finally:
            await response.aclose()

    async def cancel(self) -> BatchRecord:
        """Items not yet started never run; running ones finish. `Conflict` if the batch had already ended."""
        data = await self._transport.json("POST", f"/batches/{self.id}/cancel", idempotent=False)
        self.record = BatchRecord.from_json(data)
        return self.record
