"""docker-compose.yml and the Dockerfiles, checked against the code.

No Docker engine runs here, so these tests read the files: every module a
command starts exists, every environment name is a setting, the queues
match, Redis is persistent, password-protected and unpublished, and the
API image installs no dspy.
"""

import importlib
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import Settings
from harness.processes import ROOT

COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
DEFAULTS = Settings()
HA_SERVICES = {"redis-replica-1", "redis-replica-2", "sentinel-1", "sentinel-2", "sentinel-3"}


def dockerfile(name: str) -> str:
    return (ROOT / name).read_text()


def module_of(command: list[str]) -> str:
    """The module a command runs: `-m x`, `-A x`, or uvicorn's `x:app`."""
    for flag in ("-m", "-A"):
        if flag in command:
            return command[command.index(flag) + 1]
    return next(arg.split(":")[0] for arg in command if re.fullmatch(r"[\w.]+:\w+", arg))


def test_compose_runs_the_whole_stack() -> None:
    assert set(SERVICES) == {"redis", "api", "worker", "worker-bulk", "flower", "lm", *HA_SERVICES}


@pytest.mark.parametrize("service", ["worker", "worker-bulk", "flower", "lm"])
def test_every_compose_command_starts_a_module_that_exists(service: str) -> None:
    module = module_of(SERVICES[service]["command"])
    assert importlib.util.find_spec(module) is not None, module


def test_dockerfile_commands_start_modules_that_exist() -> None:
    for name in ("Dockerfile.api", "Dockerfile.worker"):
        for cmd in re.findall(r"^CMD (\[.*?\])$", dockerfile(name).replace("\\\n", ""), re.M):
            command = yaml.safe_load(cmd)
            assert importlib.util.find_spec(module_of(command)) is not None, (name, command)


def test_every_app_environment_name_is_a_setting() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    for service in ("api", "worker", "worker-bulk", "flower"):
        names = set(SERVICES[service]["environment"]) - {"FLOWER_BASIC_AUTH"}
        assert names <= fields, (service, names - fields)
    assert "FLOWER_BASIC_AUTH" in SERVICES["flower"]["environment"]


@pytest.mark.parametrize(
    "service,queue", [("worker", DEFAULTS.interactive_queue), ("worker-bulk", DEFAULTS.bulk_queue)]
)
def test_each_queue_has_its_own_scalable_worker(service: str, queue: str) -> None:
    worker = SERVICES[service]
    assert worker["command"][worker["command"].index("-Q") + 1] == queue
    # --scale needs neither a fixed container name nor a published port.
    assert "container_name" not in worker and "ports" not in worker


def test_redis_is_persistent_password_protected_and_not_published() -> None:
    redis = SERVICES["redis"]
    assert "--appendonly yes" in redis["command"]
    assert "--requirepass" in redis["command"]
    assert "noeviction" in redis["command"]
    # A limit, so the API's high-water mark refuses new work before Redis refuses a running job's result.
    assert "--maxmemory ${REDIS_MAXMEMORY" in redis["command"]
    assert "ports" not in redis
    assert "/data" in redis["volumes"][0]
    assert "${REDIS_PASSWORD" in COMPOSE["x-app-env"]["REDIS_URL"]


def test_the_ha_profile_adds_two_replicas_of_redis_and_three_sentinels_watching_it() -> None:
    for name in HA_SERVICES:
        assert SERVICES[name]["profiles"] == ["ha"], name
    for name in ("redis-replica-1", "redis-replica-2"):
        command = SERVICES[name]["command"]
        assert "--replicaof redis 6379" in command
        assert "--appendonly yes" in command and "noeviction" in command
        assert "--maxmemory ${REDIS_MAXMEMORY" in command  # a promoted replica keeps the limit
        assert "--requirepass" in command and "--masterauth" in command
    # A demoted primary must authenticate to the new one.
    assert "--masterauth" in SERVICES["redis"]["command"]
    sentinels = sorted(n for n in HA_SERVICES if n.startswith("sentinel"))
    for name in sentinels:
        config = SERVICES[name]["command"][0]
        monitor = re.search(r"sentinel monitor (\S+) redis 6379 (\d+)", config)
        assert monitor, config
        assert monitor.group(1) == DEFAULTS.redis_master_name
        assert 1 < int(monitor.group(2)) <= len(sentinels)  # a majority must agree the primary is down
        assert f"auth-pass {DEFAULTS.redis_master_name} ${{REDIS_PASSWORD" in config
        assert "port 26379" in config
    example = re.search(r"REDIS_SENTINELS=(\S+) docker compose --profile ha", (ROOT / "docker-compose.yml").read_text())
    assert example and sorted(a.split(":")[0] for a in example.group(1).split(",")) == sentinels
    assert all(a.endswith(":26379") for a in example.group(1).split(","))
    assert COMPOSE["x-app-env"]["REDIS_SENTINELS"] == "${REDIS_SENTINELS:-}"
    # Webhooks are signed by the workers and checked by the API: both get the same settings.
    assert COMPOSE["x-app-env"]["WEBHOOK_SECRET"] == "${WEBHOOK_SECRET:-}"


def test_flower_requires_credentials() -> None:
    assert ":?" in SERVICES["flower"]["environment"]["FLOWER_BASIC_AUTH"]


def test_embedded_lm_is_an_optional_profile_on_the_port_the_default_setting_names() -> None:
    lm = SERVICES["lm"]
    assert lm["profiles"] == ["embedded-lm"]
    port = lm["command"][lm["command"].index("--port") + 1]
    assert COMPOSE["x-app-env"]["LM_API_BASE"] == f"${{LM_API_BASE-http://lm:{port}/v1}}"
    assert DEFAULTS.lm_api_base is not None and DEFAULTS.lm_api_base.endswith(f":{port}/v1")


def test_the_embedded_lm_and_the_workers_default_to_the_same_slots_as_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The workers' limit for the embedded model follows the server's slots: one value on both sides."""
    lm_env = SERVICES["lm"]["environment"]
    expected = f"${{EMBEDDED_LM_SLOTS:-{DEFAULTS.embedded_lm_slots}}}"
    assert lm_env["EMBEDDED_LM_SLOTS"] == COMPOSE["x-app-env"]["EMBEDDED_LM_SLOTS"] == expected
    assert lm_env["EMBEDDED_LM_THREADS"] == "${EMBEDDED_LM_THREADS:-}" and DEFAULTS.embedded_lm_threads is None
    monkeypatch.setenv("EMBEDDED_LM_THREADS", "")  # what compose passes when it is unset
    assert Settings().embedded_lm_threads is None


def test_the_lm_image_compiles_nothing_and_installs_only_openmp() -> None:
    stage = dockerfile("Dockerfile.worker").split("FROM base AS lm", 1)[1]
    installed = re.findall(r"apt-get install -y --no-install-recommends ([^\\&\n]+)", stage)
    assert [packages.split() for packages in installed] == [["libgomp1"]]
    assert not re.search(r"build-essential|cmake|gcc|g\+\+", stage)


def test_services_that_serve_have_healthchecks_and_published_ports_match() -> None:
    for service in ("redis", "api", "worker", "worker-bulk", "flower", "lm", *HA_SERVICES):
        assert SERVICES[service]["healthcheck"]["test"], service
    assert SERVICES["api"]["ports"] == [f"{DEFAULTS.api_port}:8000"]
    assert SERVICES["flower"]["ports"] == [f"{DEFAULTS.flower_port}:5555"]
    assert "--port=5555" in SERVICES["flower"]["command"]
    assert '"--port", "8000"' in dockerfile("Dockerfile.api")


def test_every_service_is_restarted_when_it_dies_and_workers_may_finish_their_jobs() -> None:
    """As `make up` does (stack/supervisor.py): a process that dies costs its restart, not the stack."""
    for name, service in SERVICES.items():
        assert service.get("restart") == "unless-stopped", name
    for name in ("worker", "worker-bulk"):
        assert SERVICES[name]["stop_grace_period"], name


def test_api_image_copies_the_api_the_shared_core_the_schema_reader_the_patches_and_the_program_registry_only() -> None:
    copied = re.findall(r"^COPY (\S+)", dockerfile("Dockerfile.api"), re.M)
    assert copied == ["pyproject.toml", "client", "core", "patches", "api", "artifacts", DEFAULTS.programs_file]
    assert "--extra" not in dockerfile("Dockerfile.api")


def test_worker_image_carries_the_program_and_its_artifacts() -> None:
    copied = set(re.findall(r"^COPY (\S+)", dockerfile("Dockerfile.worker"), re.M))
    assert {"core", "program", "worker", "patches", "artifacts", DEFAULTS.programs_file} <= copied


@pytest.mark.parametrize("service", ["api", "worker", "worker-bulk"])
def test_api_and_workers_see_the_hosts_artifacts_and_registry_where_the_settings_look(service: str) -> None:
    workdir = re.findall(r"^WORKDIR (\S+)", dockerfile("Dockerfile.worker"), re.M)
    assert workdir == re.findall(r"^WORKDIR (\S+)", dockerfile("Dockerfile.api"), re.M) == ["/app"]
    mounts = SERVICES[service]["volumes"]
    assert f"./{DEFAULTS.artifacts_dir}:/app/{DEFAULTS.artifacts_dir}:ro" in mounts
    assert f"./{DEFAULTS.programs_file}:/app/{DEFAULTS.programs_file}:ro" in mounts
    assert (ROOT / str(DEFAULTS.programs_file)).exists()


def uv() -> str:
    found = shutil.which("uv") or str(ROOT / ".tools/bin/uv")
    assert Path(found).exists(), "uv not found: run the tests through `make test`"
    return found


@pytest.mark.e2e
def test_api_dependencies_from_the_lock_file_include_no_dspy() -> None:
    exported = subprocess.run(
        [uv(), "export", "--frozen", "--no-dev", "--no-hashes"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    packages = {line.split("==")[0] for line in exported.splitlines() if "==" in line}
    assert {"fastapi", "celery", "redis"} <= packages
    assert not packages & {"dspy", "litellm", "xllamacpp", "openai"}


def test_compose_requires_api_keys_because_it_publishes_the_api() -> None:
    assert ":?" in SERVICES["api"]["environment"]["API_KEYS"]


def test_flowers_app_is_built_where_flower_starts_and_nowhere_else() -> None:
    """Regression: core.queue built a Celery app on import, so every process that set up logging made one."""
    from celery import Celery, _state

    import core.queue

    before = len(list(_state._get_active_apps()))
    importlib.reload(core.queue)
    assert len(list(_state._get_active_apps())) == before
    command = SERVICES["flower"]["command"]
    assert isinstance(importlib.import_module(command[command.index("-A") + 1]).app, Celery)


def test_the_lm_image_copies_what_ships_and_none_of_the_test_harness() -> None:
    lm_stage = dockerfile("Dockerfile.worker").split(" AS lm", 1)[1]
    copied = re.findall(r"^COPY (\S+)", lm_stage, re.M)
    assert "stack" in copied
    assert not {"harness", "tests", "bench"} & set(copied)
