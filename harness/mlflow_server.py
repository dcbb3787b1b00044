"""A real MLflow tracking server (with its model registry) on loopback, for tests and local trials.

`mlflow server` with a SQLite backend store and a local artifact root, in a
directory of its own. Started with what keeps it off the internet and small
on a shared machine: one uvicorn worker, no telemetry, no server-side job
execution (which imports LiteLLM, which fetches a model cost map from the
internet at import unless told not to: it hung the server's start here).
"""

import sys
from pathlib import Path

import httpx

from harness.processes import Proc, free_port, wait_for

# Every process that talks to the test server, the server included.
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def mlflow_server_command(directory: Path, port: int) -> list[str]:
    return [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{directory / 'mlflow.db'}",
        "--default-artifact-root",
        str(directory / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def start_mlflow_server(directory: Path, name: str = "mlflow-server", timeout_s: float = 180) -> tuple[Proc, str]:
    """The server's process and tracking URI, once `/health` answers (its first start creates the database)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**QUIET_ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = Proc(name, mlflow_server_command(directory, port), env)
    uri = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{uri}/health", timeout=2).status_code == 200, timeout_s, "MLflow server", proc)
    return proc, uri
