"""The `Last-Event-ID` a reconnecting event-stream client sends: the id of the last event it has.

Our event ids are plain decimal numbers (a job's event sequence, a batch's
version), so anything else is a malformed request: 400, before the stream
takes one of the key's stream slots. The length is bounded before the
number is read: Python refuses to convert more than 4,300 digits, and
nothing we issue needs more than a 64-bit integer.
"""

import re

from fastapi import HTTPException

_ID = re.compile(r"[0-9]{1,19}")


def parse_last_event_id(header: str | None, query: str | None = None) -> int:
    """0 when the client sent none; the id as an int; 400 when it is not one of ours."""
    raw = header if header is not None else query
    if raw is None or raw == "":
        return 0
    if _ID.fullmatch(raw) is None:
        shown = raw if len(raw) <= 40 else f"{raw[:40]}... ({len(raw)} characters)"
        raise HTTPException(
            400, f"Last-Event-ID must be an event's id, a decimal number of at most 19 digits; got {shown!r}"
        )
    return int(raw)
