"""The submit-time check of a `webhook_url`: refused with a 422 that names the field, before anything is stored.

It parses with the sender's own parser (core/webhook_url.py), so what is
accepted here is what the sender can send. Names are looked up on this
process's own few threads, each within WEBHOOK_DNS_TIMEOUT_S (core/resolver.py).
"""

import functools

from fastapi.exceptions import RequestValidationError

from core.resolver import Resolver
from core.settings import Settings
from core.webhook_url import TargetRefused
from core.webhooks import check_target


@functools.cache
def _resolver(threads: int, timeout_s: float) -> Resolver:
    return Resolver(threads, timeout_s)


def _refused(url: str, message: str) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", "webhook_url"), "msg": message, "input": url}]
    )


async def check_webhook_url(url: str | None, settings: Settings) -> None:
    """Nothing for no URL or an allowed receiver; a 422 naming `webhook_url` otherwise."""
    if url is None:
        return
    if settings.webhook_secret is None:
        raise _refused(url, "webhooks are off on this server: WEBHOOK_SECRET is not set")
    try:
        await check_target(url, settings, _resolver(settings.webhook_dns_threads, settings.webhook_dns_timeout_s))
    except TargetRefused as e:
        raise _refused(url, str(e)) from e
