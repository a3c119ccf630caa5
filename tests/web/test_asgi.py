"""The HTTP side of the ASGI application: each request's synchronous work in one hop."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
from asgiref.sync import SyncToAsync
from asgiref.testing import ApplicationCommunicator
from django.core import signals
from django.core.handlers.asgi import ASGIHandler
from rest_framework.authtoken.models import Token

from project.asgi import django_asgi_app
from project.asgi_handler import RequestThread, SyncStackASGIHandler
from tests.web.conftest import make_user


def _get(app: Any, path: str, token: str, count_hops: bool = True) -> tuple[int, bytes, list[str]]:
    """One GET through the ASGI app; (status, body, the sync functions it hopped to, when
    counted: the count patches SyncToAsync for the whole process, one GET at a time)."""
    hops: list[str] = []
    original = SyncToAsync.__call__

    async def counting(self: SyncToAsync, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await original(self, *args, **kwargs)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"authorization", f"Token {token}".encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }

    async def run() -> tuple[int, bytes]:
        comm = ApplicationCommunicator(app, scope)
        await comm.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await comm.receive_output(10)
        body = b""
        while True:
            message = await comm.receive_output(10)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await comm.wait(10)
        return start["status"], body

    if not count_hops:
        return (*asyncio.run(run()), hops)
    SyncToAsync.__call__ = counting  # type: ignore[method-assign]
    try:
        status, body = asyncio.run(run())
    finally:
        SyncToAsync.__call__ = original  # type: ignore[method-assign]
    return status, body, hops


@pytest.mark.django_db(transaction=True)
def test_a_request_runs_its_middleware_and_view_in_one_hop() -> None:
    token = Token.objects.create(user=make_user("asgi-hops")).key
    status, body, hops = _get(django_asgi_app, "/api/v1/jobs/", token)
    assert status == 200, body
    assert json.loads(body)["results"] == []
    assert isinstance(django_asgi_app, SyncStackASGIHandler)
    # The stack (every middleware and the view) is one hop; the other two are Django's
    # request_started signal and the response's close (request_finished), which hand
    # the request's database connection back.
    assert len(hops) == 3, hops
    assert hops[1] == "BaseHandler.get_response", hops


@pytest.mark.django_db(transaction=True)
def test_django_s_own_handler_hops_for_each_piece() -> None:
    # What the handler saves: the same request through Django's ASGIHandler hops once
    # per synchronous middleware method and again for the view (17 with this project's
    # middleware and Django 5.2).
    token = Token.objects.create(user=make_user("asgi-stock")).key
    status, _, hops = _get(ASGIHandler(), "/api/v1/jobs/", token)
    assert status == 200
    assert "View.as_view.<locals>.view" in hops
    assert len(hops) > 10, hops


@pytest.mark.django_db(transaction=True)
def test_requests_reuse_their_threads_and_never_share_one_at_once() -> None:
    token = Token.objects.create(user=make_user("asgi-threads")).key
    app = SyncStackASGIHandler()
    seen: list[tuple[str, threading.Thread]] = []

    def started(**_: Any) -> None:
        seen.append(("started", threading.current_thread()))

    def finished(**_: Any) -> None:
        seen.append(("finished", threading.current_thread()))

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    try:
        # One after another: one thread serves them all, each from start to finish.
        for _ in range(3):
            assert _get(app, "/api/v1/jobs/", token)[0] == 200
        assert len(seen) == 6 and len({thread for _, thread in seen}) == 1, seen
        assert seen[0][1].name.startswith("request")

        # Two at once: each holds its thread until both have started, which only two
        # threads can do (one shared thread would wait at the barrier for ever).
        both = threading.Barrier(2, timeout=10)
        signals.request_started.connect(lambda **_: both.wait(), weak=False, dispatch_uid="b")
        seen.clear()

        async def two() -> None:
            await asyncio.gather(
                *(asyncio.to_thread(_get, app, "/api/v1/jobs/", token, False) for _ in "ab")
            )

        asyncio.run(two())
        assert len({thread for event, thread in seen if event == "started"}) == 2, seen
    finally:
        signals.request_started.disconnect(started)
        signals.request_started.disconnect(dispatch_uid="b")
        signals.request_finished.disconnect(finished)


def test_a_thread_still_running_a_hop_is_not_idle() -> None:
    thread = RequestThread()
    release = threading.Event()
    assert thread.idle
    future = thread.submit(release.wait, 10)
    assert not thread.idle
    release.set()
    future.result(10)
    deadline = time.monotonic() + 10
    while not thread.idle and time.monotonic() < deadline:  # its callback runs just after
        time.sleep(0.01)
    assert thread.idle
    thread.shutdown()


@pytest.mark.django_db(transaction=True)
def test_a_thread_still_busy_when_its_request_is_cancelled_is_not_reused() -> None:
    token = Token.objects.create(user=make_user("asgi-cancel")).key
    app = SyncStackASGIHandler()
    assert _get(app, "/api/v1/jobs/", token, count_hops=False)[0] == 200
    assert len(app._idle) == 1  # a request that ended kept its thread for the next

    entered, release = threading.Event(), threading.Event()

    def held(**_: Any) -> None:
        entered.set()
        release.wait(10)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/api/v1/jobs/", "raw_path": b"/api/v1/jobs/",
        "query_string": b"", "root_path": "", "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
    }  # fmt: skip

    async def cancelled_mid_request() -> None:
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # the client says nothing more
            return {}

        async def send(message: dict) -> None:
            pass

        task = asyncio.ensure_future(app(scope, receive, send))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        task.cancel()  # as a server does at shutdown, while the thread is in the request
        with pytest.raises(asyncio.CancelledError):
            await task

    signals.request_started.connect(held, dispatch_uid="held")
    try:
        asyncio.run(cancelled_mid_request())
        # The busy thread went, not back to the idle list, and the one that was idle was
        # the one taken (so none is left).
        assert app._idle == []
    finally:
        release.set()
        signals.request_started.disconnect(dispatch_uid="held")
