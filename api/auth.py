"""API keys: who may call the API, and whose jobs and batches are whose.

Keys are configured hashed (`API_KEYS`: sha256 hex digests, optionally
`name:digest`), so neither the environment nor a leaked `.env` holds a key
anyone can use. A request's key is hashed and compared with every
configured digest in constant time (`hmac.compare_digest`, no early exit),
so response timing says nothing about how close a guess was.

`AuthMiddleware` checks the key before anything else looks at the request:
an unauthenticated caller gets 401 before its body is read or parsed, and a
route added later is protected without anyone remembering to. The caller it
found is handed to the routes (`CallerDep`), which store its owner id on
what it creates and answer 404 (never 403: that would confirm the id
exists) for anything another key created.

`?api_key=` is accepted only on the two event-stream endpoints, because a
browser's EventSource cannot send headers; anywhere else a key in the URL
would end up in proxies' and servers' access logs for nothing.

Operators' keys (`API_ADMIN_KEYS`, same format) are keys like the others
and also see every key's work, `/metrics`, and what `/ready` and `/models`
say about the deployment (worker host names, LM URLs); other keys get a
summary of those, and `403` from `/metrics` (`AdminDep`).

With no keys configured the API is open (local use) and everything is
visible to everyone, as before.

    python -m api.auth hash <key>      # the digest to put in API_KEYS (`hash` alone reads the key from stdin)
    python -m api.auth new [--admin] [name]   # a fresh random key and its API_KEYS (API_ADMIN_KEYS) entry
"""

import base64
import hashlib
import hmac
import logging
import re
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import unquote_plus

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_bytes
from core.settings import Settings
from core.webhooks import SECRET_PREFIX

log = logging.getLogger(__name__)

# Reachable without a key: liveness, the page and its files, the API docs.
# They hold no data, and a browser cannot send a header to any of them.
PUBLIC_PATHS = frozenset({"/health", "/", "/static/app.js", "/static/style.css", "/docs", "/openapi.json", "/redoc"})
# The only paths that take the key as `?api_key=` (EventSource cannot set headers).
SSE_PATH = re.compile(r"^/(jobs|batches)/[^/]+/events$")
_ENTRY = re.compile(r"^(?:(?P<name>[A-Za-z0-9_.@-]{1,64}):)?(?P<digest>[0-9a-fA-F]{64})$")


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes
    owner: str
    admin: bool = False


@dataclass(frozen=True)
class Caller:
    """Who is calling: a key's name (for logs and metrics, never the key), its owner id, and whether it is an
    operator's (admin) key."""

    name: str
    # Stored on every job and batch the key creates. None: the API is open.
    owner: str | None
    # Sees every key's work, /metrics and the operator's details of /ready and /models. Every caller of an
    # open API is one: there is nobody to keep apart.
    admin: bool = False

    @property
    def bucket(self) -> str:
        """Whose limits apply: the key's, or everyone's together on an open API."""
        return self.owner or "public"

    def can_see(self, record_owner: str | None) -> bool:
        if self.owner is None or self.admin:
            return True
        return record_owner is not None and hmac.compare_digest(record_owner, self.owner)

    def scoped(self, idempotency_key: str | None) -> str | None:
        """Idempotency keys are per API key: another key's repeat must not return (or reveal) this one's job."""
        if idempotency_key is None or self.owner is None:
            return idempotency_key
        return f"{self.owner}:{idempotency_key}"


OPEN = Caller(name="anonymous", owner=None, admin=True)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def owner_id(key_digest: bytes) -> str:
    """A short id derived from the key's digest (not a prefix of it), stored on what the key creates."""
    return hashlib.sha256(b"dspy-jobs owner\0" + key_digest).hexdigest()[:16]


class ApiKeyConfigError(ValueError):
    pass


def parse_api_keys(settings: Settings) -> list[ApiKey]:
    """The configured keys (API_KEYS, and the operators' API_ADMIN_KEYS); a malformed entry stops the API at
    startup, without echoing what it holds."""
    keys = _parse_entries("API_KEYS", settings.api_keys, admin=False)
    admins = _parse_entries("API_ADMIN_KEYS", settings.api_admin_keys, admin=True)
    if admins and not keys:
        raise ApiKeyConfigError("API_ADMIN_KEYS is set but API_KEYS is not: with no API_KEYS the API is open to all")
    return keys + admins


def _parse_entries(variable: str, value: SecretStr | None, admin: bool) -> list[ApiKey]:
    raw = value.get_secret_value() if value is not None else ""
    entries = [e.strip() for e in raw.split(",")]
    if raw.strip() and not any(entries):
        raise ApiKeyConfigError(f"{variable} is set but names no key; unset it to run an open API")
    keys: list[ApiKey] = []
    for position, entry in enumerate(entries, start=1):
        if not entry:
            continue
        match = _ENTRY.match(entry)
        if match is None:
            # Most likely a plain key pasted in: say how to fix it, never what it was.
            raise ApiKeyConfigError(
                f"{variable} entry {position} is not a sha256 hex digest (or name:digest); "
                "store keys hashed: python -m api.auth hash <key>"
            )
        key_digest = bytes.fromhex(match["digest"])
        owner = owner_id(key_digest)
        keys.append(ApiKey(name=match["name"] or f"key-{owner[:8]}", digest=key_digest, owner=owner, admin=admin))
    return keys


def find_key(keys: list[ApiKey], presented: str) -> ApiKey | None:
    """The configured key matching `presented`; every digest is compared, whatever matches."""
    presented_digest = hashlib.sha256(presented.encode()).digest()
    found = None
    for key in keys:
        if hmac.compare_digest(key.digest, presented_digest):
            found = key
    return found


def _presented_key(scope: Scope) -> str | None:
    headers = {name.lower(): value for name, value in scope["headers"]}
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    header_key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    if header_key:
        return header_key
    if SSE_PATH.match(scope["path"]):
        # By its name as sent, not decoded: `api%5Fkey=` is no key (and the log filter masks it all the same).
        for pair in scope.get("query_string", b"").decode("latin-1").split("&"):
            name, _, value = pair.partition("=")
            if name == "api_key" and value:
                return unquote_plus(value)
    return None


class AuthMiddleware:
    """Pure ASGI: every request but the public paths needs a configured key, else 401."""

    def __init__(self, app: ASGIApp, keys: list[ApiKey], on_reject: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.keys = keys
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if not self.keys or scope["path"] in PUBLIC_PATHS:
            state["caller"] = OPEN
            await self.app(scope, receive, send)
            return
        presented = _presented_key(scope)
        key = find_key(self.keys, presented) if presented is not None else None
        if key is None:
            reason = "missing" if presented is None else "invalid"
            if self.on_reject is not None:
                self.on_reject(reason)
            log.warning("%s API key on %s %s", reason, scope["method"], scope["path"])
            await _unauthorized(send, reason, scope["path"])
            return
        state["caller"] = Caller(name=key.name, owner=key.owner, admin=key.admin)
        await self.app(scope, receive, send)


async def _unauthorized(send: Send, reason: str, path: str) -> None:
    how = "send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`"
    if SSE_PATH.match(path):
        how += " (or `?api_key=<key>` on event streams)"
    detail = "this API needs a key; " + how if reason == "missing" else "the API key is not valid; " + how
    body = error_bytes(detail, path, 401)  # OpenAI's shape on its routes (api/errors.py)
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="dspy-jobs"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# The security schemes, for the OpenAPI document and /docs' Authorize button.
# The check itself is AuthMiddleware's; these never refuse anything.
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The key in `X-API-Key`.")
_query = APIKeyQuery(
    name="api_key", auto_error=False, description="Event streams only, for EventSource (which cannot set headers)."
)


def _caller(request: Request) -> Caller:
    caller: Caller = request.scope.get("state", {}).get("caller", OPEN)
    return caller


# `async def`: a plain `def` dependency runs in FastAPI's thread pool (api/deps.py).
async def _documented_caller(
    request: Request,
    _bearer_key: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    _header_key: Annotated[str | None, Security(_header)],
) -> Caller:
    return _caller(request)


async def _documented_sse_caller(
    request: Request,
    _bearer_key: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    _header_key: Annotated[str | None, Security(_header)],
    _query_key: Annotated[str | None, Security(_query)],
) -> Caller:
    return _caller(request)


async def _admin(caller: Annotated[Caller, Depends(_documented_caller)]) -> Caller:
    if not caller.admin:
        raise HTTPException(403, "this needs an operator's key (API_ADMIN_KEYS; python -m api.auth new --admin)")
    return caller


CallerDep = Annotated[Caller, Depends(_documented_caller)]
AdminDep = Annotated[Caller, Depends(_admin)]
SseCallerDep = Annotated[Caller, Depends(_documented_sse_caller)]

UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"description": "No API key, or not a valid one (when the server has keys configured)."}
}


def main(argv: list[str]) -> int:
    if argv[:1] == ["hash"] and len(argv) <= 2:
        # From stdin when not given: a key on the command line stays in the shell's history.
        key = argv[1] if len(argv) == 2 else sys.stdin.readline().strip()
        if not key:
            print("no key given", file=sys.stderr)
            return 2
        print(digest(key))
        return 0
    if argv[:1] == ["new"]:
        admin = "--admin" in argv
        names = [a for a in argv[1:] if a != "--admin"]
        if len(names) > 1:
            print("usage: python -m api.auth new [--admin] [name]", file=sys.stderr)
            return 2
        key = "dj_" + secrets.token_urlsafe(32)
        entry = f"{names[0]}:{digest(key)}" if names else digest(key)
        print(f"key (give it to the client; it is not stored anywhere): {key}")
        print(f"{'API_ADMIN_KEYS' if admin else 'API_KEYS'} entry: {entry}")
        return 0
    if argv == ["webhook-secret"]:
        print(f"WEBHOOK_SECRET={SECRET_PREFIX}{base64.b64encode(secrets.token_bytes(32)).decode()}")
        return 0
    print(
        "usage: python -m api.auth hash <key>  |  python -m api.auth new [--admin] [name]  |  "
        "python -m api.auth webhook-secret",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
