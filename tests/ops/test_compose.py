"""compose.yaml, the Dockerfile and the Procfile agree with each other.

No Docker engine runs here, so these read the files as Compose and Docker would.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from project.devstack import parse_procfile

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def procfile() -> dict[str, str]:
    return parse_procfile((REPO / "Procfile").read_text())


def _command(service: dict) -> str:
    command = service["command"]
    return " ".join(command) if isinstance(command, list) else command


def test_it_has_every_service_of_the_stack(compose: dict) -> None:
    assert {"postgres", "redis", "web", "worker", "beat", "flower"} <= set(compose["services"])
    assert "version" not in compose  # obsolete in the Compose specification
    assert compose["services"]["postgres"]["image"].startswith("postgres:17")
    assert compose["services"]["redis"]["image"].startswith("redis:7")


def test_every_snapread_process_runs_the_one_image(compose: dict) -> None:
    services = compose["services"]
    for name in ("migrate", "web", "worker", "beat", "flower"):
        assert services[name]["build"] == ".", name
        assert services[name]["image"] == services["web"]["image"], name
        env = services[name]["environment"]
        assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY"} <= set(env), name
        assert "@postgres:5432/" in env["DATABASE_URL"] and "redis:6379" in env["REDIS_URL"]


def test_it_runs_the_procfile_processes(compose: dict, procfile: dict[str, str]) -> None:
    assert set(procfile) == {"web", "worker", "beat", "flower"}
    services = compose["services"]
    assert "project.asgi:application" in _command(services["web"])
    assert "project.asgi:application" in procfile["web"]
    for name in ("worker", "beat", "flower"):
        ours = _command(services[name]).split()
        theirs = procfile[name].split()
        assert ours[:4] == theirs[:4], name  # celery -A project <role>
    assert _command(services["worker"]) == procfile["worker"]
    # The same web server and options, on all interfaces of its container, port 8000 (the
    # Procfile's environment is the service's environment there).
    prefix = "env MALLOC_ARENA_MAX=2 PROMETHEUS_MULTIPROC_DIR=var/web-metrics/${PORT:-8000} "
    assert procfile["web"].startswith(prefix)
    web = procfile["web"].removeprefix(prefix)
    web = web.replace("--host 127.0.0.1", "--host 0.0.0.0").replace("${PORT:-8000}", "8000")
    assert _command(services["web"]) == web
    assert "--workers ${WEB_CONCURRENCY:-2}" in web
    environment = services["web"]["environment"]
    assert environment["MALLOC_ARENA_MAX"] == "2"
    assert environment["PROMETHEUS_MULTIPROC_DIR"] == "/app/var/web-metrics"
    # The image's own default command is that service, with its environment.
    [cmd] = re.findall(r"^CMD (\[.*?\])$", (REPO / "Dockerfile").read_text(), re.M | re.S)
    image = " ".join(json.loads(cmd.replace("\\\n", "")))
    assert image == (
        "env MALLOC_ARENA_MAX=2 PROMETHEUS_MULTIPROC_DIR=/app/var/web-metrics "
        + web.replace("${WEB_CONCURRENCY:-2}", "2")
    )
    assert "--basic-auth=${FLOWER_BASIC_AUTH" in _command(services["flower"])


def test_it_reserves_an_nvidia_gpu_for_the_worker(compose: dict) -> None:
    [device] = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_it_keeps_redis_on_disk_and_never_evicts(compose: dict) -> None:
    redis = compose["services"]["redis"]
    command = _command(redis)
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_it_keeps_data_and_media_in_volumes(compose: dict) -> None:
    assert {"pgdata", "redisdata", "media"} <= set(compose["volumes"])
    for name in ("web", "worker"):
        assert "media:/data/media" in compose["services"][name]["volumes"]


def test_it_checks_health_and_waits_for_it(compose: dict) -> None:
    services = compose["services"]
    for name in ("postgres", "redis", "web", "worker"):
        assert "test" in services[name]["healthcheck"], name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        ), name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert services["web"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_it_takes_secrets_only_from_the_environment(compose: dict) -> None:
    text = (REPO / "compose.yaml").read_text()
    assert "${SECRET_KEY:?" in text and "${POSTGRES_PASSWORD:?" in text
    assert "${FLOWER_BASIC_AUTH:?" in text
    assert compose["services"]["web"]["environment"]["DEBUG"] == "0"


def test_the_dockerfile_installs_every_system_package() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim-bookworm" in dockerfile
    # Every package: the image installs the list itself, not a copy of it.
    assert re.search(r"grep .*requirements/apt\.txt \| xargs apt-get install", dockerfile)
    assert "pip install -r requirements/worker.txt" in dockerfile
    assert re.search(r"^USER (?!root)", dockerfile, re.M)


def test_the_system_package_list_has_what_the_tests_need() -> None:
    listed = set(
        re.findall(r"^([a-z0-9][\w.+-]*)\s*$", (REPO / "requirements/apt.txt").read_text(), re.M)
    )
    assert {"tesseract-ocr-eng", "fonts-dejavu-core", "fonts-gfs-didot"} <= listed


def test_ci_installs_the_same_system_packages() -> None:
    assert "requirements/apt.txt" in (REPO / ".ci/run").read_text()
    assert "requirements/apt.txt" in (REPO / "Makefile").read_text()
