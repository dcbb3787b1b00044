"""HTTP to the API: the base URL and key, timeouts, typed errors, and only the retries that are safe.

A request is tried again (at most `max_retries` times, after the server's
`Retry-After` or else a doubling backoff) when:

- it never reached the server (the connection could not be made), or
- the server answered 429 or 503, which from this API always means nothing
  was stored (docs/api.md), or
- it may have reached the server but repeating it cannot do anything twice:
  a GET, or a submission, which always carries an `Idempotency-Key` (so the
  repeat returns the original job instead of a second one).

A cancel that broke off after it was sent is not repeated: a second one
would answer 409 for the first one's success.
"""

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from dspy_jobs_client.errors import APIConnectionError, APIError, api_error

# Errors raised before any byte of the request left: always safe to repeat.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 8.0


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 2
    # The longest Retry-After worth sleeping through; past it the caller hears the 429 or 503 at once.
    max_wait_s: float = 30.0

    def after_transport_error(self, attempt: int, error: httpx.TransportError, idempotent: bool) -> float | None:
        """Seconds to wait before trying again, or None to give up."""
        if attempt >= self.max_retries or not (idempotent or isinstance(error, _NOT_SENT)):
            return None
        return backoff_s(attempt)

    def after_error_status(self, attempt: int, error: APIError, idempotent: bool) -> float | None:
        if attempt >= self.max_retries:
            return None
        if error.status_code in (429, 503) or (idempotent and error.status_code in (502, 504)):
            delay = error.retry_after_s if error.retry_after_s is not None else backoff_s(attempt)
            return delay if delay <= self.max_wait_s else None
        return None


def backoff_s(attempt: int) -> float:
    return min(_BACKOFF_MAX_S, _BACKOFF_FIRST_S * 2**attempt)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


@dataclass(frozen=True)
class Settings:
    base_url: str
    api_key: str | None
    timeout_s: float
    retry: RetryPolicy

    def client_kwargs(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "headers": auth_headers(self.api_key), "timeout": self.timeout_s}


def _connection_error(request: httpx.Request, error: httpx.TransportError) -> APIConnectionError:
    return APIConnectionError(f"{request.method} {request.url}: {type(error).__name__}: {error}")


class SyncTransport:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client = httpx.Client(**settings.client_kwargs())

    def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
        stream: bool = False,
        retry: bool = True,
        request_timeout: httpx.Timeout | float | None = None,
    ) -> httpx.Response:
        """A successful response (unread if `stream`: close it), else the typed error."""
        request = self._client.build_request(
            method, path, json=json, params=params, headers=headers, timeout=request_timeout or self.settings.timeout_s
        )
        policy = self.settings.retry if retry else RetryPolicy(max_retries=0)
        attempt = 0
        while True:
            try:
                response = self._client.send(request, stream=stream)
            except httpx.TransportError as e:
                delay = policy.after_transport_error(attempt, e, idempotent)
                if delay is None:
                    raise _connection_error(request, e) from e
            else:
                if not response.is_error:
                    return response
                try:
                    response.read()
                except httpx.TransportError as e:
                    raise _connection_error(request, e) from e
                finally:
                    response.close()
                error = api_error(response)
                delay = policy.after_error_status(attempt, error, idempotent)
                if delay is None:
                    raise error
            time.sleep(delay)
            attempt += 1

    def json(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> Any:
        return self.send(method, path, idempotent=idempotent, **kwargs).json()

    def close(self) -> None:
        self._client.close()


class AsyncTransport:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client = httpx.AsyncClient(**settings.client_kwargs())

    async def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
        stream: bool = False,
        retry: bool = True,
        request_timeout: httpx.Timeout | float | None = None,
    ) -> httpx.Response:
        """A successful response (unread if `stream`: close it), else the typed error."""
        request = self._client.build_request(
            method, path, json=json, params=params, headers=headers, timeout=request_timeout or self.settings.timeout_s
        )
        policy = self.settings.retry if retry else RetryPolicy(max_retries=0)
        attempt = 0
        while True:
            try:
                response = await self._client.send(request, stream=stream)
            except httpx.TransportError as e:
                delay = policy.after_transport_error(attempt, e, idempotent)
                if delay is None:
                    raise _connection_error(request, e) from e
            else:
                if not response.is_error:
                    return response
                try:
                    await response.aread()
                except httpx.TransportError as e:
                    raise _connection_error(request, e) from e
                finally:
                    await response.aclose()
                error = api_error(response)
                delay = policy.after_error_status(attempt, error, idempotent)
                if delay is None:
                    raise error
            await asyncio.sleep(delay)
            attempt += 1

    async def json(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> Any:
        return (await self.send(method, path, idempotent=idempotent, **kwargs)).json()

    async def aclose(self) -> None:
        await self._client.aclose()
