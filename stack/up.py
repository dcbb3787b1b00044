"""`make up`: the whole service in the foreground, on this machine, one Ctrl-C to stop.

Starts, with every log line prefixed by its service, and restarts any that
exits (stack/supervisor.py):
- Redis: reuses the one at `REDIS_URL` if it answers; otherwise starts a
  local `redis-server` there (AOF on, data in `.run/redis-<port>`); otherwise exits
  saying how to get one.
- the embedded LM (llama.cpp's server over Gemma 3 270M, `EMBEDDED_LM_SLOTS`
  calls at once) when `LM_MODEL` is left at its default, `LM_API_BASE` is on
  this machine (its port is the server's) and nothing answers there yet;
- workers on the interactive queue (`WORKER_PROCESSES`, one per core by
  default), one on the bulk queue, the API, and Flower (basic auth;
  credentials are generated and printed unless `FLOWER_BASIC_AUTH` is set).

When the API is ready it prints the URLs and a `curl` that works as printed.
"""

import os
import secrets
import shutil
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import redis

from core.programs import registered_programs
from core.settings import Settings, get_settings
from stack.embedded_lm import CPUUnsupported, check_cpu
from stack.supervisor import Supervisor

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
PY = sys.executable


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def _redis_command(url: str) -> list[str] | None:
    """A command starting redis-server at `url`, or None when one already answers."""
    if _redis_answers(url):
        return None
    binary = shutil.which("redis-server")
    parsed = urlparse(url)
    if binary is None or parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(
            f"Redis does not answer at {url} and none can be started here.\n"
            "Install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)\n"
            "or set REDIS_URL to a Redis you run elsewhere."
        )
    data = RUN_DIR / f"redis-{parsed.port or 6379}"
    data.mkdir(parents=True, exist_ok=True)
    args = [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(parsed.port or 6379),
        "--dir",
        str(data),
        "--appendonly",
        "yes",
        "--maxmemory-policy",
        "noeviction",
        "--maxmemory",
        get_settings().redis_maxmemory,
    ]
    if parsed.password:
        args += ["--requirepass", parsed.password]
    return args


def _lm_answers(api_base: str) -> bool:
    try:
        return httpx.get(f"{api_base}/models", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _lm_command(settings: Settings) -> list[str] | None:
    if not settings.uses_embedded_lm or _lm_answers(str(settings.lm_api_base)):
        return None
    try:
        check_cpu()
    except CPUUnsupported as e:
        sys.exit(f"make up cannot start the embedded LM: {e}")
    parsed = urlparse(str(settings.lm_api_base))
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 8080
    return [PY, "-m", "stack.embedded_lm", "--host", host, "--port", str(port)]


def _announce_when_ready(settings: Settings, flower_auth: str, generated: bool) -> None:
    api = f"http://{settings.api_host}:{settings.api_port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            # With API keys configured /ready wants one, which we do not have (only
            # digests are configured): a 401 there still means the API is up.
            api_ready = httpx.get(f"{api}/ready", timeout=2).status_code in (
                (200, 401) if settings.api_keys else (200,)
            )
            if api_ready and _lm_answers(str(settings.lm_api_base)):
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    else:
        print("!! the API did not become ready within 10 minutes; see the logs above", flush=True)
        return
    user, _, password = flower_auth.partition(":")
    key_header = " -H 'Authorization: Bearer <your key>'" if settings.api_keys else ""
    note = "  (generated for this run; set FLOWER_BASIC_AUTH to choose)" if generated else ""
    programs = ", ".join(
        f"{name} (default)" if name == settings.default_program else name for name in registered_programs(settings)
    )
    print(
        f"""
================================================================
 DSPy jobs is up.
   API        {api}      (docs: {api}/docs)
   Flower     http://127.0.0.1:{settings.flower_port}   user {user} / password {password}{note}
   LM         {settings.lm_model} at {settings.lm_api_base}
   Programs   {programs}   ({api}/programs)

 Try it:
   curl -s -X POST '{api}/jobs?wait=60' -H 'Content-Type: application/json'{key_header} \\
        -d '{{"question": "What is the capital of France?"}}'

 A service that exits is restarted. Ctrl-C stops everything.
================================================================
""",
        flush=True,
    )


def _worker_names(settings: Settings) -> list[tuple[str, str]]:
    """(name, queue) of each worker process: `WORKER_PROCESSES` on the interactive queue, one on bulk."""
    interactive = [(f"worker{i + 1}", settings.interactive_queue) for i in range(settings.effective_worker_processes)]
    return [*interactive, ("bulk", settings.bulk_queue)]


def main() -> int:
    settings = get_settings()
    RUN_DIR.mkdir(exist_ok=True)
    generated = settings.flower_basic_auth is None
    if not settings.api_keys:
        print(
            "\n" + "!" * 64 + "\n"
            " WARNING: no API_KEYS configured: the API is OPEN to anyone who can reach\n"
            f" {settings.api_host}:{settings.api_port}. Fine on this machine; before exposing it, create a key\n"
            " (python -m api.auth new <name>) and set API_KEYS to its digest.\n" + "!" * 64 + "\n",
            flush=True,
        )
    flower_auth = (
        f"admin:{secrets.token_urlsafe(12)}" if generated else settings.flower_basic_auth.get_secret_value()  # type: ignore[union-attr]
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLOWER_BASIC_AUTH": flower_auth}

    supervisor = Supervisor()
    cwd = str(ROOT)
    # With Sentinels, Redis is yours to run (docker-compose.yml's `ha` profile shows one way).
    if not settings.redis_sentinels and (cmd := _redis_command(settings.redis_url)) is not None:
        supervisor.add("redis", cmd, env, cwd)
    if (cmd := _lm_command(settings)) is not None:
        supervisor.add("lm", cmd, env, cwd)
    # Workers of their own per queue, so a draining batch never delays an interactive job.
    for name, queue in _worker_names(settings):
        celery = [PY, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", queue, "-n", f"{name}@%h"]
        supervisor.add(name, [*celery, "--loglevel", "INFO", "--without-mingle", "--without-gossip"], env, cwd)
    api = [PY, "-m", "uvicorn", "api.main:app", "--host", settings.api_host, "--port", str(settings.api_port)]
    supervisor.add("api", api, env, cwd)
    # Flower's default is every interface; make up is for this machine only.
    flower = [
        PY,
        "-m",
        "celery",
        "-A",
        "core.flower_app",
        "flower",
        f"--port={settings.flower_port}",
        "--address=127.0.0.1",
    ]
    supervisor.add("flower", flower, env, cwd)
    threading.Thread(target=_announce_when_ready, args=(settings, flower_auth, generated), daemon=True).start()
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
