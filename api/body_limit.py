"""Refuse oversized request bodies with 413 before anything parses them.

Pure ASGI: a declared Content-Length over the limit is refused at once (the
server never reads more than it declares); a chunked body is read here, up
to the limit, and refused as soon as it passes it.
Batch submissions get their own, larger limit, whichever route they take.
"""

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import send_error


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit_for_path: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for_path = limit_for_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for_path(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send, limit, scope["path"])
            return
        if declared is not None:
            await self.app(scope, receive, send)
            return
        # No Content-Length: read the body here, up to the limit, then hand it
        # on. (Raising from `receive` instead would reach FastAPI's body parser,
        # which turns any error there into a 400.)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await _refuse(send, limit, scope["path"])
                return
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _refuse(send: Send, limit: int, path: str) -> None:
    await send_error(send, path, 413, f"request body is larger than the limit of {limit} bytes")
