"""kombu's Redis transport, as messages lie in Redis: written by the API, read by the reaper.

The API writes interactive jobs' task messages itself, in the same Redis step
as their records (api/enqueue.py), and the reaper reads the message next in
a queue and kombu's unacknowledged messages to find jobs whose message was
lost (worker/reaper.py). Both go through this module, which knows how kombu
lays them out:

- a queue is a list named after it; a message is a JSON envelope
  (`body` base64, `content-type`, `headers` with the task's `id`, `task` and
  `eta`, `properties` with `delivery_tag` and `delivery_info`);
- fanout messages (Celery's events, for Flower) are published on the channel
  `/<db>.<exchange>/<routing key>`;
- with ack emulation, messages taken and not yet acknowledged are the hash
  `UNACKED`: delivery tag -> `[envelope, exchange, routing key]` (JSON).

That is kombu's storage format, which workers of other versions must read
too, so it changes rarely; tests/test_enqueue.py compares our messages with
the ones `send_task` writes, and the reaper's tests read both layouts.
"""

import base64
import json
import uuid
from collections.abc import Iterable
from typing import Any

from kombu.serialization import dumps as serialize

# Hash (kombu's, not ours): delivery tag -> a message taken from its queue and not yet acknowledged.
UNACKED = "unacked"


def envelope(serializer: str, body: Any, headers: dict[str, Any], properties: dict[str, Any]) -> str:
    """A message as kombu's Redis transport stores it (`prepare_message` + `basic_publish`)."""
    content_type, content_encoding, data = serialize(body, serializer=serializer)
    raw = data if isinstance(data, bytes) else data.encode(content_encoding or "utf-8")
    properties = {**properties, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())}
    return json.dumps(
        {
            "body": base64.b64encode(raw).decode(),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": headers,
            "properties": properties,
        }
    )


def fanout_channel(db: str, exchange: str, routing_key: str) -> str:
    """The pub/sub channel of a fanout message (kombu's `fanout_prefix` and `fanout_patterns`, both on)."""
    return f"/{db}.{exchange}/{routing_key}"


def task_headers(message: str) -> dict[str, Any] | None:
    """The task headers of an envelope (`id`, `task`, `eta`, ...), or None for one that is not a task's."""
    try:
        headers = json.loads(message)["headers"]
    except (ValueError, KeyError, TypeError):
        return None
    return headers if isinstance(headers, dict) and "id" in headers else None


def unacked_task_ids(values: Iterable[str]) -> set[str]:
    """The task ids of `UNACKED`'s values (`[envelope, exchange, routing key]`). By id, not by substring:
    batch item `B-1` is not held because `B-12` is."""
    held = set()
    for value in values:
        try:
            held.add(str(json.loads(value)[0]["headers"]["id"]))
        except (ValueError, KeyError, TypeError, IndexError):
            continue
    return held
