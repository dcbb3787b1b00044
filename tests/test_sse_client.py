"""The test and bench SSE readers skip the server's keep-alive comments (harness/sse_client.py)."""

from httpx_sse._decoders import SSEDecoder

from harness.sse_client import keepalive


def test_a_keepalive_comment_after_an_event_reaches_the_reader_as_an_empty_message_and_is_skipped() -> None:
    decoder = SSEDecoder()
    lines = ["id: 1", "event: status", 'data: {"status":"queued"}', "", ": ping - 2026-12-01 21:00:00", ""]
    events = [sse for sse in map(decoder.decode, lines) if sse is not None]
    assert [(e.event, e.data) for e in events] == [("status", '{"status":"queued"}'), ("message", "")]
    assert [keepalive(e) for e in events] == [False, True]
