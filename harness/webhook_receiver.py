"""A webhook receiver on loopback that records what reaches it and answers as scripted (tests, trying it out).

`python -m harness.webhook_receiver [port]` prints every event it gets (and
verifies it when WEBHOOK_SECRET is set): a receiver to point `webhook_url` at
while trying the service locally (with WEBHOOK_ALLOW_PRIVATE=true).
"""

import contextlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> dict[str, object]:
        loaded: dict[str, object] = json.loads(self.body)
        return loaded


class Receiver:
    """Answers each POST with the next of `answers` (then `then`); an answer of None holds the request
    `hold_s` seconds without answering. `reply`: the body and headers of every answer, in place of a small
    JSON one (a gzip bomb, for instance). `host`: any loopback address (127.0.0.2 is another receiver than
    127.0.0.1 to the sender, whatever the ports)."""

    def __init__(
        self,
        port: int = 0,
        answers: list[int | None] | None = None,
        then: int | None = 200,
        hold_s: float = 60.0,
        reply: tuple[bytes, dict[str, str]] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.received: list[Received] = []
        self._answers = list(answers or [])
        self._then = then
        self._hold_s = hold_s
        reply_body, reply_headers = reply or (b'{"receiver": "says something the service must not log"}', {})
        self._lock = threading.Lock()
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver._lock:
                    receiver.received.append(
                        Received({k.lower(): v for k, v in self.headers.items()}, body, time.time())
                    )
                    answer = receiver._answers.pop(0) if receiver._answers else receiver._then
                if answer is None:
                    receiver._released.wait(receiver._hold_s)
                    return
                self.send_response(answer)
                if 300 <= answer < 400:
                    self.send_header("location", f"http://{host}:{receiver.port}/redirected")
                self.send_header("content-type", "application/json")
                for name, value in reply_headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(reply_body)))
                self.end_headers()
                # A client that reads the status only hangs up before the body: what the sender does.
                with contextlib.suppress(ConnectionError):
                    self.wfile.write(reply_body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self.url = f"http://{host}:{self.port}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, n: int, timeout_s: float) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while len(self.received) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.received)

    def close(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def main(argv: list[str]) -> int:
    secret = os.environ.get("WEBHOOK_SECRET")
    receiver = Receiver(int(argv[0]) if argv else 8900)
    print(f"receiving on {receiver.url}", flush=True)
    seen = 0
    try:
        while True:
            for event in receiver.wait_for(seen + 1, 1.0)[seen:]:
                seen += 1
                verdict = "not verified (no WEBHOOK_SECRET)"
                if secret:
                    try:
                        Webhook(secret).verify(event.body, event.headers)
                        verdict = "signature verified"
                    except WebhookVerificationError as e:
                        verdict = f"signature REFUSED: {e}"
                print(f"{event.headers.get('webhook-id')}: {verdict}\n{event.body.decode()}", flush=True)
    except KeyboardInterrupt:
        receiver.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
