"""ws/jobs/{id}/ over the real Redis channel layer, fed by a real worker (FAKE chain)."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import SyncToAsync, async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.backends.db import SessionStore
from rest_framework.authtoken.models import Token

from detection.models import TERMINAL
from project.asgi import application
from project.celery import app

from .conftest import queued_job_without_message

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://localhost:8000")


def token_path(job: Any, user: Any) -> str:
    return f"/ws/jobs/{job.id}/?token={Token.objects.get_or_create(user=user)[0].key}"


def close_code(path: str, headers: list[tuple[bytes, bytes]]) -> int | None:
    async def scenario() -> int | None:
        socket = WebsocketCommunicator(application, path, headers=headers)
        connected, _ = await socket.connect(timeout=5)
        if not connected:
            return None
        message = await socket.receive_output(timeout=5)
        await socket.disconnect()
        return message.get("code")

    return async_to_sync(scenario)()


def test_it_sends_the_current_state_then_every_stage_in_order(spine_worker, alice) -> None:
    job = queued_job_without_message(alice)
    path = token_path(job, alice)

    async def scenario() -> tuple[dict, list[tuple[str, str | None]]]:
        socket = WebsocketCommunicator(application, path, headers=[ORIGIN])
        connected, _ = await socket.connect(timeout=5)
        assert connected
        first = await socket.receive_json_from(timeout=5)
        app.send_task("workers.tasks.read_job", args=[str(job.id)])
        seen = []
        while not seen or seen[-1][0] not in TERMINAL:
            message = await socket.receive_json_from(timeout=20)
            seen.append((message["job"]["status"], message["job"]["stage"]))
        await socket.disconnect()
        return first, seen

    first, seen = async_to_sync(scenario)()

    assert (first["type"], first["job"]["status"]) == ("job", "queued")
    assert seen == [
        ("running", None),
        ("running", "classify"),
        ("running", "detect"),
        ("running", "crop"),
        ("running", "ocr"),
        ("succeeded", None),
    ]


def test_it_accepts_the_owners_session_cookie(alice) -> None:
    job = queued_job_without_message(alice)
    session = SessionStore()
    session["_auth_user_id"] = str(alice.pk)
    session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
    session["_auth_user_hash"] = alice.get_session_auth_hash()
    session.create()
    cookie = (b"cookie", f"sessionid={session.session_key}".encode())

    async def scenario() -> dict:
        socket = WebsocketCommunicator(application, f"/ws/jobs/{job.id}/", headers=[ORIGIN, cookie])
        assert (await socket.connect(timeout=5))[0]
        message = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return message

    assert async_to_sync(scenario)()["job"]["id"] == str(job.id)


def test_it_closes_with_4404_for_another_users_job(alice, bob) -> None:
    job = queued_job_without_message(alice)

    assert close_code(token_path(job, bob), [ORIGIN]) == 4404


def test_it_closes_with_4403_without_credentials(alice) -> None:
    job = queued_job_without_message(alice)

    assert close_code(f"/ws/jobs/{job.id}/?token=not-a-token", [ORIGIN]) == 4403


def test_it_refuses_a_foreign_origin(alice) -> None:
    job = queued_job_without_message(alice)
    evil = (b"origin", b"https://evil.example")

    assert close_code(token_path(job, alice), [evil]) is None


def test_an_update_reaches_the_socket_without_a_thread_hop(alice) -> None:
    # The consumer's only database work is its first read; each update after it goes
    # from the channel layer to the socket on the event loop (channels' own dispatch
    # would first hand every message to a thread to close database connections).
    from channels.layers import get_channel_layer

    from detection.selectors import job_group

    job = queued_job_without_message(alice)
    path = token_path(job, alice)
    hops: list[str] = []
    original = SyncToAsync.__call__

    async def counting(self: SyncToAsync, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await original(self, *args, **kwargs)

    async def scenario() -> tuple[list[dict], list[str]]:
        socket = WebsocketCommunicator(application, path, headers=[ORIGIN])
        assert (await socket.connect(timeout=5))[0]
        await socket.receive_json_from(timeout=5)
        hops.clear()
        layer = get_channel_layer()
        for stage in ("classify", "detect"):
            update = {"id": str(job.id), "status": "running", "stage": stage}
            await layer.group_send(job_group(job.id), {"type": "job.update", "job": update})
        received = [await socket.receive_json_from(timeout=5) for _ in range(2)]
        during_updates = list(hops)
        await socket.disconnect()  # (its end closes them, once per socket)
        return received, during_updates

    SyncToAsync.__call__ = counting  # type: ignore[method-assign]
    try:
        received, during_updates = async_to_sync(scenario)()
    finally:
        SyncToAsync.__call__ = original  # type: ignore[method-assign]
    assert [m["job"]["stage"] for m in received] == ["classify", "detect"]
    assert during_updates == [], during_updates
