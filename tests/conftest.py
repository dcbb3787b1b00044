"""Fixtures: one real stack per test session, and factories for private ones.

The shared stack (private redis-server, LM simulator, one worker, one API)
serves tests that only submit and read jobs. Tests that stop processes, count
loads or inspect queues build their own stack on their own redis-server so
they never disturb each other.

Tests that start processes are marked `e2e`; `make test-unit` runs the
others (`pytest -m "not e2e"`). So that command stays fast and honest, an
unmarked test may not use a fixture that starts processes (collection
fails) nor start a process itself (`subprocess.Popen` refuses).
"""

import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import redis

from harness.mlflow_server import start_mlflow_server
from harness.processes import Proc, free_port, start_api, start_lm_simulator, start_redis, start_worker, wait_for

# The fixtures below that start processes.
PROCESS_FIXTURES = frozenset({"lm_api_base", "stack", "client", "make_stack", "lm_requests", "mlflow_tracking_uri"})


class ProcessRefused(RuntimeError):
    pass


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if used and item.get_closest_marker("e2e") is None:
            raise pytest.UsageError(f"{item.nodeid} starts processes ({', '.join(sorted(used))}): mark it e2e")


@pytest.fixture(autouse=True)
def unit_tests_start_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("e2e") is not None:
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise ProcessRefused(f"{request.node.nodeid} is not marked e2e, so it may not start a process: {args[:1]}")

    monkeypatch.setattr(subprocess, "Popen", refuse)


# Models a job may name besides the default; the simulator answers any.
OTHER_MODEL = "openai/other-model"
FLOWER_AUTH = ("admin", "s3cret-for-tests")


@dataclass
class Stack:
    redis_url: str
    lm_api_base: str
    procs: list[Proc] = field(default_factory=list)
    api_url: str = ""
    model: str = "openai/simulated"
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {
            "REDIS_URL": self.redis_url,
            "LM_MODEL": self.model,
            "LM_API_BASE": self.lm_api_base,
            "LM_ALLOWED_MODELS": OTHER_MODEL,
            "LM_CACHE": "false",
            "WORKER_HEARTBEAT_S": "0.5",
            "WORKER_OFFLINE_AFTER_S": "3",
            "RETRY_BASE_S": "0.1",
            "JOB_LEASE_S": "3",
            "REAPER_INTERVAL_S": "0.5",
            **self.extra_env,
        }

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, timeout=30)

    def start_worker(self, **kwargs: object) -> Proc:
        proc = start_worker(self.env, **kwargs)  # type: ignore[arg-type]
        self.procs.append(proc)
        return proc

    def start_api(self) -> str:
        proc, self.api_url = start_api(self.env)
        self.procs.append(proc)
        return self.api_url

    def start_flower(self) -> tuple[str, Proc]:
        """Flower as `make up` runs it, behind `FLOWER_AUTH`: its URL once it answers, and its process."""
        port = free_port()
        flower = Proc(
            "flower",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "core.flower_app",
                "flower",
                f"--port={port}",
                "--address=127.0.0.1",
            ],
            {**self.env, "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)},
        )
        self.procs.append(flower)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/api/workers", auth=FLOWER_AUTH).status_code == 200, 30, "Flower", flower)
        return url, flower

    def stop_redis(self) -> None:
        """SIGTERM to this stack's own redis-server: it writes its AOF (given `appendonly`) and exits."""
        self.procs[0].stop()

    def start_redis_again(self) -> None:
        """Its redis-server again, on the same port and data directory, once it answers."""
        port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        restarted, url = start_redis("redis-private", appendonly=True, port=port)
        assert restarted is not None, "only a stack with a redis-server of its own can restart it"
        self.procs[0] = restarted
        wait_for(lambda: bool(redis.Redis.from_url(url).ping()), 10, "the restarted Redis", restarted)

    def start_services(self) -> None:
        """What serves jobs: an interactive worker, a bulk worker and the API."""
        self.start_worker()
        self.start_worker(name="worker-bulk", queues="bulk")
        self.start_api()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def private_stack(lm_api_base: str, redis_name: str = "redis-private", appendonly: bool = False) -> Stack:
    """A stack on a redis-server of its own (or on a flushed `REDIS_URL`), nothing else running yet."""
    redis_proc, url = start_redis(redis_name, appendonly=appendonly)
    if redis_proc is None:
        redis.Redis.from_url(url).flushdb()
    return Stack(url, lm_api_base, [redis_proc] if redis_proc else [])


@pytest.fixture(scope="session")
def lm_api_base() -> Iterator[str]:
    proc, base = start_lm_simulator()
    yield base
    proc.stop()


@pytest.fixture(scope="session")
def stack(lm_api_base: str) -> Iterator[Stack]:
    stack = private_stack(lm_api_base, "redis")
    stack.start_services()
    yield stack
    stack.stop()


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as c:
        yield c


@pytest.fixture
def make_stack(lm_api_base: str) -> Iterator[Callable[..., Stack]]:
    """A private redis-server with nothing running on it yet."""
    made: list[Stack] = []

    def make(appendonly: bool = False) -> Stack:
        made.append(private_stack(lm_api_base, appendonly=appendonly))
        return made[-1]

    yield make
    for s in made:
        s.stop()


@pytest.fixture(scope="session")
def mlflow_tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server with its model registry (harness/mlflow_server.py), empty at first."""
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    yield uri
    proc.stop()


@pytest.fixture
def lm_requests(lm_api_base: str) -> Callable[[str], list[dict[str, object]]]:
    """What reached the LM simulator for a given question."""

    def for_question(question: str) -> list[dict[str, object]]:
        base = lm_api_base.removesuffix("/v1")
        return [r for r in httpx.get(f"{base}/_requests").json() if r["question"] == question]

    return for_question
