"""The submit-time check of a `webhook_url`: refused with a 422 that names the field, before anything is stored."""

from fastapi.exceptions import RequestValidationError

from core.settings import Settings
from core.webhooks import TargetRefused, check_target


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
        await check_target(url, settings)
    except TargetRefused as e:
        raise _refused(url, str(e)) from e
