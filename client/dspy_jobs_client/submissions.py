"""What a submission sends: the program's input, the options, the `Idempotency-Key`.

Inputs and options never share a namespace: the client always uses
`POST /programs/{name}/jobs` (and `/batches`), whose body holds the input
under `input`, so an input field may be called `model` or `stream`.

Every submission carries an `Idempotency-Key`, one made up here when the
caller gives none, so the client can repeat a submission whose answer was
lost without creating a second job (http.py).
"""

import urllib.parse
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict


class JobOptions(TypedDict, total=False):
    """Options of a job or batch, all optional; the server's defaults apply to what is left out."""

    model: str  # the LM for this job only; must be one the server allows (LM_ALLOWED_MODELS)
    temperature: float  # 0 to 2
    stream: bool  # stream tokens as they are written (jobs: true by default; batch items: false)
    expires_after_s: float  # end `expired`, never run, if no worker has started it within this many seconds
    webhook_url: str  # receives one signed event when it ends (`verify_webhook` checks it)
    version: str  # run this version of the program, whatever its rollout (one some worker holds)
    rollout_key: str  # during a canary, work with the same key gets the same version (a user id)


class SubmitOptions(JobOptions, total=False):
    # The same key and body within a day return the original instead of a new one.
    idempotency_key: str


@dataclass(frozen=True)
class BatchItem:
    """A batch item with your own id, echoed in its result; a plain mapping is an item without one."""

    input: Mapping[str, Any]
    custom_id: str | None = None


def _options_body(options: SubmitOptions) -> dict[str, Any]:
    return {name: value for name, value in options.items() if name != "idempotency_key" and value is not None}


def job_body(inputs: Mapping[str, Any], options: SubmitOptions) -> dict[str, Any]:
    return {"input": dict(inputs), **_options_body(options)}


def _item(item: Mapping[str, Any] | BatchItem) -> dict[str, Any]:
    if isinstance(item, BatchItem):
        body: dict[str, Any] = {"input": dict(item.input)}
        if item.custom_id is not None:
            body["custom_id"] = item.custom_id
        return body
    return {"input": dict(item)}


def batch_body(items: Iterable[Mapping[str, Any] | BatchItem], options: SubmitOptions) -> dict[str, Any]:
    return {"items": [_item(item) for item in items], **_options_body(options)}


def idempotency_headers(options: SubmitOptions) -> dict[str, str]:
    return {"Idempotency-Key": options.get("idempotency_key") or uuid.uuid4().hex}


def program_path(program: str, kind: str = "") -> str:
    """`/programs/{name}`, or its `jobs` or `batches` route."""
    path = f"/programs/{urllib.parse.quote(program, safe='')}"
    return f"{path}/{kind}" if kind else path
