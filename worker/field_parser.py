"""Splitting a completion into its output fields as it streams in: ChatAdapter's `[[ ## field ## ]]`
sections (`FieldParser`) or JSONAdapter's JSON object (`JsonFieldParser`). worker/streaming.py says why we
parse the stream ourselves instead of `dspy.streamify`."""

import json
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


_WHITESPACE = " \t\r\n"
_DECODER = json.JSONDecoder(strict=False)  # models write raw newlines inside strings; DSPy's parser takes them


class JsonFieldParser:
    """Splits a JSONAdapter completion (one JSON object: field name -> value), fed in pieces, into the text of
    each output field as it arrives: a string value decoded (what the adapter parses), any other value as the
    JSON the model writes (a typed field's text is its JSON). Keys that are no output field go nowhere, and
    nothing after the object's closing brace does."""

    def __init__(self, fields: list[str], on_token: OnToken, streamed: set[str]) -> None:
        self._fields = set(fields)
        self._on_token = on_token
        self.streamed = streamed
        self._state = "object"  # object, key, colon, value, string, raw, done
        self._key = ""
        self._escaped = False  # the previous character of a key or string was a backslash
        self._pending = ""  # a string value's text not yet decoded (it may end inside an escape)
        self._held = ""  # trailing whitespace of a raw value, sent only if more of the value follows
        self._depth = 0  # brackets open inside a raw value
        self._in_string = False  # inside a string nested in a raw value
        self._out: list[str] = []  # this feed's text for the current field

    def feed(self, text: str) -> None:
        for ch in text:
            self._step(ch)
        self._flush()

    def finish(self) -> None:
        """The completion ended: what is left belongs to the value being written."""
        self._flush(final=True)

    def _step(self, ch: str) -> None:
        state = self._state
        if state == "object":
            if ch == '"':
                self._state, self._key, self._escaped = "key", "", False
            elif ch == "}":
                self._state = "done"
        elif state == "key":
            if self._escaped:
                self._key, self._escaped = self._key + ch, False
            elif ch == "\\":
                self._escaped = True
            elif ch == '"':
                self._state = "colon"
            else:
                self._key += ch
        elif state == "colon":
            if ch == ":":
                self._state = "value"
        elif state == "value":
            if ch in _WHITESPACE:
                return
            if ch == '"':
                self._state, self._pending, self._escaped = "string", "", False
            else:
                self._state, self._depth, self._in_string, self._held = "raw", 0, False, ""
                self._raw(ch)
        elif state == "string":
            if self._escaped:
                self._pending, self._escaped = self._pending + ch, False
            elif ch == "\\":
                self._pending, self._escaped = self._pending + ch, True
            elif ch == '"':
                self._decode(final=True)
                self._flush()
                self._state = "object"
            else:
                self._pending += ch
        elif state == "raw":
            self._raw(ch)

    def _raw(self, ch: str) -> None:
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif ch == "\\":
                self._escaped = True
            elif ch == '"':
                self._in_string = False
        elif ch == '"':
            self._in_string = True
        elif ch in "[{":
            self._depth += 1
        elif ch in "]}" and self._depth > 0:
            self._depth -= 1
        elif self._depth == 0 and ch in ",}":  # the value ended, and with `}` the object
            self._flush()
            self._state = "object" if ch == "," else "done"
            return
        if ch in _WHITESPACE:
            self._held += ch
        else:
            self._out.append(self._held + ch)
            self._held = ""

    def _decode(self, final: bool = False) -> None:
        """Move the decodable part of a string value's pending text to this feed's output."""
        pending = self._pending
        cut = len(pending) if final else _decodable(pending)
        if cut == 0:
            return
        try:
            text = _DECODER.decode('"' + pending[:cut] + '"')
        except ValueError:  # not JSON after all: pass the text on as written
            text = pending[:cut]
        self._out.append(text)
        self._pending = pending[cut:]

    def _flush(self, final: bool = False) -> None:
        if self._state == "string":
            self._decode(final)
        text = "".join(self._out)
        self._out = []
        if text and self._key in self._fields:
            self.streamed.add(self._key)
            self._on_token(self._key, text)


def _decodable(raw: str) -> int:
    """How much of a JSON string's raw text can be decoded now: not an escape still being written, nor a high
    surrogate whose low half has not arrived."""
    i = safe = 0
    while i < len(raw):
        if raw[i] != "\\":
            i += 1
        elif i + 1 == len(raw):
            break
        elif raw[i + 1] != "u":
            i += 2
        elif i + 6 > len(raw):
            break
        elif raw[i + 2 : i + 4].lower() in ("d8", "d9", "da", "db"):  # a high surrogate: wait for its pair
            if i + 12 > len(raw):
                break
            i += 12
        else:
            i += 6
        safe = i
    return safe
