"""Flower, as `make up` and the compose file run it, refuses anonymous visitors."""

import sys
from collections.abc import Callable

import httpx

from tests.conftest import Stack
from tests.support import Proc, free_port, wait_for


def test_flower_refuses_an_unauthenticated_request(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    port = free_port()
    flower = Proc(
        "flower",
        [sys.executable, "-m", "celery", "-A", "core.queue", "flower", f"--port={port}", "--address=127.0.0.1"],
        {**stack.env, "FLOWER_BASIC_AUTH": "admin:s3cret-for-tests"},
    )
    stack.procs.append(flower)
    url = f"http://127.0.0.1:{port}/"
    wait_for(lambda: httpx.get(url).status_code in (200, 401), 30, "Flower", flower)

    anonymous = httpx.get(url)
    wrong = httpx.get(url, auth=("admin", "guess"))
    allowed = httpx.get(url, auth=("admin", "s3cret-for-tests"))

    assert anonymous.status_code == 401
    assert wrong.status_code == 401
    assert allowed.status_code == 200
