"""A real SSE client for tests (httpx + httpx-sse), and the reader's rules."""

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import aconnect_sse, connect_sse


@dataclass
class Received:
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.events]

    def text(self) -> dict[str, str]:
        """Per-field text as a client builds it: a `running` event starts a new attempt."""
        text: dict[str, str] = {}
        for event in self.events:
            if event["type"] == "status" and event["data"]["status"] == "running":
                text = {}
            elif event["type"] == "token":
                field_name = event["data"]["field"]
                text[field_name] = text.get(field_name, "") + event["data"]["text"]
        return text

    @property
    def terminal(self) -> dict[str, Any]:
        assert self.events and self.events[-1]["type"] in ("result", "error"), self.events[-3:]
        return self.events[-1]


def keepalive(sse: Any) -> bool:
    """The server's keep-alive comment, which httpx-sse hands over as an empty `message` event."""
    return bool(sse.event == "message" and not sse.data)


def _event(sse: Any) -> dict[str, Any]:
    return {"seq": int(sse.id), "type": sse.event, "data": json.loads(sse.data)}


def read_events(
    client: httpx.Client, job_id: str, last_event_id: int | None = None, stop_after: int | None = None
) -> Received:
    """Read the job's stream to its end, or disconnect after `stop_after` events."""
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    received = Received()
    with connect_sse(client, "GET", f"/jobs/{job_id}/events", headers=headers) as source:
        source.response.raise_for_status()
        for sse in source.iter_sse():
            if keepalive(sse):
                continue
            received.events.append(_event(sse))
            if stop_after is not None and len(received.events) >= stop_after:
                break
    return received


async def aread_events(client: httpx.AsyncClient, job_id: str) -> Received:
    received = Received()
    async with aconnect_sse(client, "GET", f"/jobs/{job_id}/events") as source:
        source.response.raise_for_status()
        async for sse in source.aiter_sse():
            if not keepalive(sse):
                received.events.append(_event(sse))
    return received
