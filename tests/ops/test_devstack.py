"""`make run`'s devstack: the Procfile, service discovery, embedded servers, supervision."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest
import redis

from project import devstack

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: it only waits for its parent to read its status.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_it_expands_variables_as_the_shell_would() -> None:
    env = {"PORT": "9000", "EMPTY": ""}
    assert devstack.expand("-p ${PORT:-8000}", env) == "-p 9000"
    assert devstack.expand("-p ${FLOWER_PORT:-5555}", env) == "-p 5555"
    assert devstack.expand("x${EMPTY:-d}y${MISSING}z", env) == "xdyz"


def test_it_refuses_to_start_flower_without_its_password() -> None:
    with pytest.raises(SystemExit, match="FLOWER_BASIC_AUTH must be set"):
        devstack.expand("--basic-auth=${FLOWER_BASIC_AUTH:?user:password for Flower}", {})
    assert devstack.expand("${FLOWER_BASIC_AUTH:?x}", {"FLOWER_BASIC_AUTH": "a:b"}) == "a:b"


def test_it_reads_the_procfile() -> None:
    parsed = devstack.parse_procfile("# comment\nweb: daphne x:app\n\nworker: celery -A p worker\n")
    assert parsed == {"web": "daphne x:app", "worker": "celery -A p worker"}


def test_it_reads_the_real_procfile_with_its_defaults() -> None:
    processes = devstack.parse_procfile((REPO / "Procfile").read_text())
    assert list(processes) == ["web", "worker", "beat", "flower"]
    env = {"FLOWER_BASIC_AUTH": "admin:secret"}
    assert devstack.expand(processes["web"], env) == (
        "env MALLOC_ARENA_MAX=2 PROMETHEUS_MULTIPROC_DIR=var/web-metrics/8000 "
        "uvicorn project.asgi:application --host 127.0.0.1 --port 8000 --workers 2 "
        "--http httptools --loop uvloop --ws websockets --lifespan off --no-access-log"
    )
    three = devstack.expand(processes["web"], {**env, "WEB_CONCURRENCY": "3", "PORT": "8010"})
    assert "PROMETHEUS_MULTIPROC_DIR=var/web-metrics/8010 " in three
    assert "--port 8010 --workers 3 " in three
    flower = devstack.expand(processes["flower"], env)
    assert "--port=5555" in flower and "--basic-auth=admin:secret" in flower


def test_it_uses_the_services_named_in_the_environment() -> None:
    env = {"DATABASE_URL": "postgres://u@db:5432/x", "REDIS_URL": "redis://r:6379/1"}
    found = devstack.find_services(env)
    assert (found.database_url, found.redis_url) == (env["DATABASE_URL"], env["REDIS_URL"])
    assert found.started == [] and not found.embedded_pg


def test_it_finds_the_local_servers() -> None:
    found = devstack.find_services({})
    assert found.database_url == "postgres://postgres@127.0.0.1:5432/snapread"
    assert found.redis_url == "redis://127.0.0.1:6379/0"
    assert found.started == [] and not found.embedded_pg


def test_it_starts_an_embedded_redis_when_told_to(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(devstack, "VAR", tmp_path)
    monkeypatch.setattr(devstack, "EMBEDDED_REDIS_PORT", 6391)
    found = devstack.find_services(
        {"SNAPREAD_EMBEDDED": "1", "DATABASE_URL": "postgres://u@db:5432/x"}
    )
    try:
        assert found.redis_url == "redis://127.0.0.1:6391/0"
        [proc] = found.started
        server = redis.Redis.from_url(found.redis_url)
        assert server.config_get("appendonly") == {"appendonly": "yes"}
        assert server.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        for proc in found.started:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)


@pytest.mark.slow
def test_it_starts_an_embedded_postgres_and_creates_the_database(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(devstack, "VAR", tmp_path)
    monkeypatch.setattr(devstack, "EMBEDDED_PG_PORT", 54339)
    data = devstack._pg_data_dir()
    found = devstack.find_services({"SNAPREAD_EMBEDDED": "1", "REDIS_URL": "redis://r:6379/1"})
    try:
        assert found.embedded_pg
        assert found.database_url == "postgres://postgres@127.0.0.1:54339/snapread"
        devstack.ensure_database(found.database_url)
        devstack.ensure_database(found.database_url)  # a second run finds it there
        with psycopg.connect(found.database_url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("snapread",)
    finally:
        devstack.stop_embedded_postgres()
        shutil.rmtree(data, ignore_errors=True)
    assert not devstack.answers("127.0.0.1", 54339)


def test_it_stops_everything_when_one_process_dies(capsys) -> None:
    started = time.monotonic()
    code = devstack.run_processes(
        {"sleeper": "sleep 60 & echo child $!; wait", "crasher": "sleep 0.5; exit 3"},
        dict(os.environ),
        grace=5,
    )
    assert code == 3
    assert time.monotonic() - started < 5
    [pid] = [int(p) for p in re.findall(r"child (\d+)", capsys.readouterr().out)]
    assert not _alive(pid)


def test_it_stops_every_process_group_on_sigterm(tmp_path) -> None:
    script = tmp_path / "stack.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys
            from project import devstack
            processes = {
                "a": "sleep 60 & echo child $!; wait",
                "b": "echo child $$; exec sleep 60",
            }
            sys.exit(devstack.run_processes(processes, dict(os.environ), grace=5))
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    pids = []
    while len(pids) < 2:
        line = proc.stdout.readline()
        assert line, "the stack ended before its processes started"
        pids += [int(p) for p in re.findall(r"child (\d+)", line)]
    assert all(_alive(pid) for pid in pids)
    proc.send_signal(signal.SIGTERM)
    # Within about a second here; the bound is loose because a CI machine busy with the
    # embedded PostgreSQL the test before shut down once took over 10 s.
    assert proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)
