"""Fixtures for the browser suite: the page as a person uses it, in a real Chromium.

The server is the Procfile's web command (the project's ASGI app) in a
subprocess on a free port, speaking HTTP and WebSocket, on the test database and the
test Redis; the browser is Debian's headless Chromium driven by Playwright; jobs are
read by the web suite's real Celery worker with the real reference pack.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connections
from web.conftest import (  # noqa: F401 - fixtures and hooks, found by name
    POOLS,
    Workers,
    _test_services,
    alice,
    bob,
    image_bytes,
    pytest_runtest_teardown,
    queued_job_without_message,
    reading_worker,
)

# pytest imports tests/web/conftest.py as `web.conftest` (tests/ has no __init__.py, so
# it is the import root). Importing it by that same name shares the module, and so the
# one list of worker pools that keeps a single worker running across both suites.
from web.live_stack import free_port, web_command, web_path

from bench.stack import http_ok

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "browser"
CHROMIUM = os.environ.get("SNAPREAD_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS: list[Path] = []
T = TypeVar("T")


@pytest.fixture(scope="package")
def workers(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    """The web suite's worker pool, for this package only.

    A worker another suite left running would take this suite's jobs, so it is stopped
    first; this pool's own stops when the package is done.
    """
    for other in POOLS:
        other.stop()
    pool = Workers(tmp_path_factory.mktemp("workers"))
    POOLS.append(pool)
    yield pool
    pool.stop()
    POOLS.remove(pool)


def service_env() -> dict[str, str]:
    """The environment of a process serving the test database, Redis and media."""
    db = settings.DATABASES["default"]
    auth = quote(db["USER"]) + (":" + quote(db["PASSWORD"]) if db["PASSWORD"] else "")
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DATABASE_URL=f"postgres://{auth}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
        REDIS_URL=settings.REDIS_URL,
        MEDIA_ROOT=str(settings.MEDIA_ROOT),
        DEBUG="1",
        SNAPREAD_HTTPS="0",
    )
    return env


@pytest.fixture(scope="package")
def server(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of the Procfile's web server (HTTP and WebSocket) on a free port."""
    log_path = tmp_path_factory.mktemp("web") / "web.log"
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            web_command(port),
            cwd=REPO, env=dict(service_env(), PATH=web_path()), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while not http_ok(f"http://127.0.0.1:{port}/healthz"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"web did not start:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: install `chromium` (requirements/apt.txt)")
    with sync_playwright() as playwright, pytest.MonkeyPatch.context() as patch:
        # Playwright's sync API leaves its event loop marked as running in this thread,
        # which Django takes for an async context and refuses the ORM in (the tests and
        # pytest-django's flush between them). The code here is synchronous all the same.
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


def outside_the_loop(function: Callable[..., T], *args: Any) -> T:
    """Call a function that publishes to the channel layer (asgiref refuses to in the
    thread where Playwright's loop runs) from a thread of its own."""

    def call() -> T:
        try:
            return function(*args)
        finally:
            # The thread's own database connection, which would outlive it otherwise.
            connections.close_all()

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(call).result()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def context(browser: Any, server: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser profile (cookies, clipboard rights) on the test server; on a
    failure, a screenshot of each of its pages is kept."""
    context = browser.new_context(
        base_url=server, viewport={"width": 1280, "height": 900}, accept_downloads=True
    )
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server)
    context.set_default_timeout(20_000)
    yield context
    if request.node.stash.get(FAILED, False):
        for i, page in enumerate(context.pages):
            screenshot(page, f"FAILED-{request.node.name}-{i}")
    context.close()


def screenshot(page: Any, name: str) -> Path:
    """A full-page screenshot under artifacts/browser/, listed at the end of the run."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    SCREENSHOTS.append(path)
    print(f"screenshot: {path}")
    return path


def log_in(context: Any, user: Any) -> Any:
    """A page at / after logging in through Django's login form, as a person does."""
    page = context.new_page()
    page.goto("/")
    assert "/accounts/login/" in page.url
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill("pw-" + user.username)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/$"))
    return page


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SCREENSHOTS:
        terminalreporter.section("browser screenshots")
        for path in SCREENSHOTS:
            terminalreporter.write_line(str(path))
