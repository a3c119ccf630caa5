"""detection.live: job updates sent from synchronous code reach the group's members in
order, over connections the process keeps, also in a forked child."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading

import pytest
import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from detection import live


def receive_all(channel: str, n: int) -> list[dict]:
    layer = get_channel_layer()

    async def drain() -> list[dict]:
        return [await asyncio.wait_for(layer.receive(channel), timeout=10) for _ in range(n)]

    return async_to_sync(drain)()


def new_member(group: str) -> str:
    layer = get_channel_layer()

    async def join() -> str:
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        return channel

    return async_to_sync(join)()


def connections_received() -> int:
    return int(redis.Redis.from_url(settings.REDIS_URL).info("stats")["total_connections_received"])


def test_updates_from_a_thread_arrive_in_order_over_kept_connections() -> None:
    channel = new_member("job.live-order")
    live.group_send("job.live-order", {"type": "job.update", "n": -1})  # connects
    opened = connections_received()

    def send() -> None:
        for n in range(30):
            live.group_send("job.live-order", {"type": "job.update", "n": n})

    worker = threading.Thread(target=send)
    worker.start()
    worker.join()

    assert [m["n"] for m in receive_all(channel, 31)] == [-1, *range(30)]
    # async_to_sync from a thread without a loop opened a connection for every send (30);
    # the margin is for other clients of the same server.
    assert connections_received() - opened <= 5


def _send_in_child(group: str) -> None:
    live.group_send(group, {"type": "job.update", "n": "child"})


def test_a_forked_child_sends_on_a_loop_of_its_own() -> None:
    channel = new_member("job.live-fork")
    live.group_send("job.live-fork", {"type": "job.update", "n": "parent"})

    child = multiprocessing.get_context("fork").Process(
        target=_send_in_child, args=("job.live-fork",)
    )
    child.start()
    child.join(timeout=20)
    if child.is_alive():
        child.kill()

    assert child.exitcode == 0
    assert [m["n"] for m in receive_all(channel, 2)] == ["parent", "child"]


def test_it_refuses_to_block_a_running_event_loop() -> None:
    async def on_a_loop() -> None:
        live.group_send("job.live-refused", {"type": "job.update"})

    with pytest.raises(RuntimeError, match="running event loop"):
        asyncio.run(on_a_loop())
