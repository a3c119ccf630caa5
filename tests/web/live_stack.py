"""The web process as it runs for real (the Procfile's web command: HTTP and WebSocket),
and a worker started with its metrics endpoint and JSON logs, for tests that talk to them
over the network like any client or scraper would."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from django.conf import settings

from project.devstack import expand, parse_procfile

from .conftest import REPO, WorkerProcess, Workers, purge_queues


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def web_command(port: int) -> list[str]:
    """The Procfile's ``web`` line on ``port``, as ``make run`` starts it."""
    import shlex

    line = parse_procfile((REPO / "Procfile").read_text())["web"]
    return shlex.split(expand(line, {"PORT": str(port)}))


def web_path() -> str:
    """PATH with this virtualenv's programs first: the Procfile names them bare."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def database_url() -> str:
    db = settings.DATABASES["default"]
    auth = quote(db["USER"]) + (":" + quote(db["PASSWORD"]) if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


class LiveWeb:
    """The Procfile's web server on a free port, on the test database and Redis."""

    def __init__(self, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        environment = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="project.settings",
            DATABASE_URL=database_url(),
            REDIS_URL=settings.REDIS_URL,
            MEDIA_ROOT=str(settings.MEDIA_ROOT),
            SNAPREAD_SUBMIT_RATE="100000/min",
            SNAPREAD_HTTPS="0",
            PATH=web_path(),
            **env,
        )
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            web_command(self.port),
            cwd=REPO, env=environment, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if requests.get(f"{self.base}/healthz", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise AssertionError(f"web did not start:\n{self.log_text()[-4000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self._log.close()


@contextlib.contextmanager
def running_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveWeb]:
    """For a module fixture (which must also depend on django_db_setup, so that the
    web process stops before the test database is dropped)."""
    web = LiveWeb(tmp_path_factory.mktemp("web") / "web.log", LOG_FORMAT="json")
    try:
        web.wait_ready()
        yield web
    finally:
        web.stop()


class InstrumentedWorker:
    def __init__(self, process: WorkerProcess, metrics_port: int, metrics_dir: Path) -> None:
        self.process = process
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.metrics_dir = metrics_dir

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def scrape(self, timeout: float = 20.0) -> str:
        # The endpoint starts when the worker is ready, a moment after it answers pings.
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = requests.get(self.metrics_url, timeout=5)
                response.raise_for_status()
                return response.text
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def scrape_until(self, done: Callable[[str], bool], timeout: float = 20.0) -> str:
        """The first scrape for which `done` holds, else the last one when time is up.
        A job's row turns terminal when its result commits; the worker records the job's
        metrics a moment later, after the task returns."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.scrape()
            if done(text) or time.monotonic() > deadline:
                return text
            time.sleep(0.1)


def start_instrumented_worker(
    workers: Workers, tmp_path_factory: pytest.TempPathFactory
) -> InstrumentedWorker:
    """A fresh spine worker (FAKE chain) serving metrics and writing JSON logs. It stays
    for later tests, which only see a worker that also serves metrics."""
    port = free_port()
    metrics_dir = tmp_path_factory.mktemp("worker-metrics")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WORKER_METRICS_PORT", str(port))
        env.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
        env.setenv("LOG_FORMAT", "json")
        purge_queues()
        workers.stop()
        process = workers.ensure("spine")
    return InstrumentedWorker(process, port, metrics_dir)


def samples(text: str, name: str, **labels: str) -> list[Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` with these labels (0 when there are none)."""
    return sum(sample.value for sample in samples(text, name, **labels))
