"""Fixtures for the web suite: users, API clients, images, and real Celery workers.

Workers are real `celery -A project worker` processes on the test database and the
test Redis database. Only one runs at a time: the *spine* worker (with the FAKE chain
of tests/web/fake_chain.py, for tests of the job mechanics) or the *reading* worker
(with the real reference pack, for end-to-end tests).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from detection.models import TERMINAL, Job

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session", autouse=True)
def _test_services() -> Iterator[None]:
    assert settings.REDIS_URL.endswith("/15") or os.environ.get("TEST_REDIS_URL"), (
        "tests/settings.py must point Redis at the test database before it is flushed"
    )
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    yield
    if Path(settings.MEDIA_ROOT).name.startswith("snapread-test-media-"):
        shutil.rmtree(settings.MEDIA_ROOT, ignore_errors=True)


# -- users and clients ----------------------------------------------------------------


def make_user(username: str) -> Any:
    return get_user_model().objects.create_user(username, password="pw-" + username)


def token_client(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


@pytest.fixture
def alice(db: None) -> Any:
    return make_user("alice")


@pytest.fixture
def bob(db: None) -> Any:
    return make_user("bob")


@pytest.fixture
def alice_api(alice: Any) -> APIClient:
    return token_client(alice)


@pytest.fixture
def bob_api(bob: Any) -> APIClient:
    return token_client(bob)


# -- images and files -----------------------------------------------------------------


def image_bytes(
    colour: tuple[int, int, int] = (200, 200, 200), size: tuple[int, int] = (64, 48), fmt="PNG"
) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, fmt)
    return out.getvalue()


def upload(data: bytes, name: str = "photo.png") -> ContentFile:
    return ContentFile(data, name=name)


def media_files() -> set[str]:
    root = Path(settings.MEDIA_ROOT)
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def queued_job_without_message(
    owner: Any, colour=(200, 200, 200), data: bytes | None = None, **fields: Any
) -> Job:
    """A queued job whose Celery message was lost: the row and file, no message.

    The stored image is ``data`` when given, else a plain image of ``colour``.
    """
    from detection.uploads import normalize_upload

    image = normalize_upload(io.BytesIO(data if data is not None else image_bytes(colour)))
    job = Job(
        owner=owner,
        image_width=image.width,
        image_height=image.height,
        image_sha256=image.sha256,
        **fields,
    )
    job.image = default_storage.save(f"jobs/{job.id}/input.png", ContentFile(image.data))
    job.save()
    return job


def wait_for_job(job_id: Any, statuses=TERMINAL, timeout: float = 30.0) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        job = Job.objects.get(id=job_id)
        if job.status in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job.status} after {timeout}s")
        time.sleep(0.05)


# -- real Celery workers --------------------------------------------------------------


class WorkerProcess:
    def __init__(self, kind: str, log_dir: Path) -> None:
        self.kind = kind
        self.name = f"{kind}-{os.getpid()}@{socket.gethostname()}"
        self.log_path = log_dir / f"{kind}-worker.log"
        db = settings.DATABASES["default"]
        auth = quote(db["USER"]) + (":" + quote(db["PASSWORD"]) if db["PASSWORD"] else "")
        env = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="project.settings",
            DATABASE_URL=f"postgres://{auth}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
            REDIS_URL=settings.REDIS_URL,
            MEDIA_ROOT=str(settings.MEDIA_ROOT),
        )
        entry = ["-m", "tests.web.spine_worker"] if kind == "spine" else ["-m", "celery"]
        command = [sys.executable, *entry, "-A", "project", "worker", "-Q", "gpu,default"]
        # The threads pool with batching, as the Procfile runs it.
        command += ["-P", "threads", "-c", "8", "-E", "-l", "info", "-n", self.name]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float) -> None:
        from project.celery import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if app.control.ping(destination=[self.name], timeout=0.5):
                return
        raise AssertionError(f"{self.kind} worker did not start:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self._log.close()


class Workers:
    """At most one worker at a time, of the kind the current test asks for."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.current: WorkerProcess | None = None

    def ensure(self, kind: str, timeout: float = 60.0) -> WorkerProcess:
        if self.current and self.current.kind == kind and self.current.process.poll() is None:
            return self.current
        self.stop()
        self.current = WorkerProcess(kind, self.log_dir)
        self.current.wait_ready(timeout)
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


POOLS: list[Workers] = []


def purge_queues() -> None:
    from project.celery import app

    with app.connection_for_write() as conn:
        for queue in ("gpu", "default"):
            conn.default_channel.queue_purge(queue)


@pytest.fixture(scope="session")
def workers(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    # Depends on django_db_setup so that workers stop before the test database is dropped.
    pool = Workers(tmp_path_factory.mktemp("workers"))
    POOLS.append(pool)
    yield pool
    pool.stop()


@pytest.fixture
def spine_worker(workers: Workers, transactional_db: None) -> WorkerProcess:
    """A real worker running the FAKE chain; its results say nothing about reading."""
    purge_queues()
    return workers.ensure("spine")


@pytest.fixture
def reading_worker(workers: Workers, transactional_db: None) -> WorkerProcess:
    """A real worker running the real chain with the pack in SNAPREAD_PACK."""
    manifest = Path(settings.SNAPREAD_PACK) / "manifest.json"
    if not manifest.exists():
        pytest.fail(f"the reference pack is missing: no {manifest} (see issue 2)")
    purge_queues()
    return workers.ensure("reading", timeout=180.0)


def quiesce_worker(timeout: float = 30.0) -> None:
    """Drop waiting messages and let the worker finish what it holds.

    A transactional test ends by truncating every table; a worker still writing a job
    it took from that test would deadlock with the TRUNCATE (it did, in CI).
    """
    from project.celery import app

    purge_queues()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = app.control.inspect(timeout=0.5, limit=1).active() or {}
        if not any(active.values()):
            return
        time.sleep(0.2)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    # Before any fixture is finalised, so before pytest-django's flush.
    marker = item.get_closest_marker("django_db")
    transactional = "transactional_db" in getattr(item, "fixturenames", ()) or bool(
        marker and marker.kwargs.get("transaction")
    )
    if transactional and any(pool.current is not None for pool in POOLS):
        quiesce_worker()
    yield
