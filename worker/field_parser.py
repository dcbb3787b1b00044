"""Splitting a ChatAdapter completion into its output fields as it streams in (worker/streaming.py says
why we parse the stream ourselves instead of `dspy.streamify`)."""

import re
from collections.abc import Callable

OnToken = Callable[[str, str], None]

_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]")
# What a header looks like before its last character has arrived: "[", "[[", ... "[[ ## name ## ]".
_HEADER_PARTS = [r"\[", " ", "#", "#", " ", r"\w+", " ", "#", "#", " ", r"\]"]
_PARTIAL_HEADER = re.compile(r"\[" + "".join(f"(?:{p}" for p in _HEADER_PARTS) + ")?" * len(_HEADER_PARTS) + r"\Z")


class FieldParser:
    """Splits a ChatAdapter completion, fed in pieces, into the text of each output field, as it arrives.

    Text after a header belongs to that field (text under any other header,
    such as `completed`, to none). A field's text is stripped as the adapter
    strips it: leading whitespace dropped, trailing whitespace held back until
    more text follows, none sent after the field's last word. A piece that
    may be the start of the next header waits for the characters that decide.
    """

    def __init__(self, fields: list[str], on_token: OnToken, streamed: set[str]) -> None:
        self._fields = set(fields)
        self._on_token = on_token
        self.streamed = streamed
        self._pending = ""  # not yet given to a field: may hold the start of a header
        self._field: str | None = None
        self._started = False  # the current field has had text other than whitespace
        self._held = ""  # trailing whitespace of the current field, sent only if more text follows

    def feed(self, text: str) -> None:
        pending = self._pending + text
        while (header := _HEADER.search(pending)) is not None:
            self._write(pending[: header.start()])
            name = header.group(1)
            self._field = name if name in self._fields else None
            self._started, self._held = False, ""
            pending = pending[header.end() :]
        cut = pending.find("[")
        while cut >= 0 and not _PARTIAL_HEADER.match(pending, cut):
            cut = pending.find("[", cut + 1)
        if cut < 0:
            cut = len(pending)
        self._write(pending[:cut])
        self._pending = pending[cut:]

    def finish(self) -> None:
        """The completion ended: what is left belongs to the field being written."""
        self._write(self._pending)
        self._pending = ""

    def _write(self, text: str) -> None:
        if self._field is None or not text:
            return
        if not self._started:
            text = text.lstrip()
        body = text.rstrip()
        if body:
            self._started = True
            self.streamed.add(self._field)
            self._on_token(self._field, self._held + body)
            self._held = text[len(body) :]
        else:
            self._held += text
