"""The channel layer as configured (settings.CHANNEL_LAYERS) keeps a job's live updates
through what a web process goes through: sockets closing while updates for others are
on their way, and Redis restarting."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils.module_loading import import_string

from detection import live
from tests.faults.servers import RedisServer


def test_a_socket_closing_takes_no_update_meant_for_another() -> None:
    # Two sockets of one web process. Whichever receive waits on Redis for the process
    # (the list-based layer gives that to one of them at a time) belongs to the socket
    # that closes, at the moment Redis has just handed over the other socket's update.
    async def scenario() -> dict:
        layer = get_channel_layer()
        leaving, staying = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("job.layer-leaving", leaving)
        await layer.group_add("job.layer-staying", staying)
        leaving_receive = asyncio.ensure_future(layer.receive(leaving))
        await asyncio.sleep(0.2)  # it is the one waiting on Redis
        staying_receive = asyncio.ensure_future(layer.receive(staying))
        await asyncio.sleep(0.2)
        # The worker's update goes out while this process's loop is busy (blocked here on
        # purpose), so the update reaches this process before the loop reads it ...
        sender = threading.Thread(
            target=live.group_send,
            args=("job.layer-staying", {"type": "job.update", "n": "outcome"}),
        )
        sender.start()
        sender.join()
        time.sleep(0.1)
        # ... and then the first socket closes, as a watcher does after its job's outcome.
        leaving_receive.cancel()
        return await asyncio.wait_for(staying_receive, timeout=10)

    assert asyncio.run(scenario())["n"] == "outcome"


def test_sockets_hear_their_jobs_again_after_redis_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # While Redis is down the layer's receive loop logs every failed read; expected here.
    caplog.set_level("CRITICAL", logger="channels_redis.pubsub")
    redis = RedisServer(tmp_path)
    redis.start()
    config = settings.CHANNEL_LAYERS["default"]
    backend = import_string(config["BACKEND"])

    def layer() -> object:
        return backend(**{**config["CONFIG"], "hosts": [redis.url]})

    def send(n: int) -> None:
        # From another process's point of view: a layer and a loop of its own.
        asyncio.run(layer().group_send("job.layer-restart", {"type": "job.update", "n": n}))

    async def scenario() -> list[int]:
        web = layer()
        channel = await web.new_channel()
        await web.group_add("job.layer-restart", channel)
        await asyncio.to_thread(send, 1)
        heard = [(await asyncio.wait_for(web.receive(channel), timeout=10))["n"]]
        redis.kill()
        redis.start()  # empty: it keeps nothing on disk
        # Updates sent while the process has not yet found the new server are lost, as
        # any sent while Redis is down; the job's row is the truth (clients can poll).
        deadline = time.monotonic() + 20
        n = 1
        while time.monotonic() < deadline:
            n += 1
            await asyncio.to_thread(send, n)
            try:
                heard.append((await asyncio.wait_for(web.receive(channel), timeout=0.5))["n"])
                return heard
            except TimeoutError:
                continue
        return heard

    try:
        heard = asyncio.run(scenario())
    finally:
        redis.kill()
    assert heard[0] == 1
    assert len(heard) == 2, "no update reached the socket after Redis restarted"
