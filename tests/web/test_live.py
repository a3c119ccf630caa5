"""detection.live: job updates sent from synchronous code reach the group's members in
order, over connections the process keeps, also in a forked child."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from channels.layers import get_channel_layer
from django.conf import settings

from detection import live


class Member:
    """A channel in `group`, on an event loop of its own that keeps running between
    calls, as a web process's loop does: the channel layer delivers to a subscription
    while it lasts, not to whoever asks later."""

    def __init__(self, group: str) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.layer = get_channel_layer()
        self.channel = self._run(self._join(group))

    async def _join(self, group: str) -> str:
        channel = await self.layer.new_channel()
        await self.layer.group_add(group, channel)
        return channel

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def receive(self, n: int) -> list[dict]:
        async def drain() -> list[dict]:
            return [
                await asyncio.wait_for(self.layer.receive(self.channel), timeout=10)
                for _ in range(n)
            ]

        return self._run(drain())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


_members: list[Member] = []


@pytest.fixture(autouse=True)
def _close_members() -> Iterator[None]:
    yield
    while _members:
        _members.pop().close()


def new_member(group: str) -> Member:
    member = Member(group)
    _members.append(member)
    return member


def connections_received() -> int:
    return int(redis.Redis.from_url(settings.REDIS_URL).info("stats")["total_connections_received"])


def test_updates_from_a_thread_arrive_in_order_over_kept_connections() -> None:
    member = new_member("job.live-order")
    live.group_send("job.live-order", {"type": "job.update", "n": -1})  # connects
    opened = connections_received()

    def send() -> None:
        for n in range(30):
            live.group_send("job.live-order", {"type": "job.update", "n": n})

    worker = threading.Thread(target=send)
    worker.start()
    worker.join()

    assert [m["n"] for m in member.receive(31)] == [-1, *range(30)]
    # async_to_sync from a thread without a loop opened a connection for every send (30);
    # the margin is for other clients of the same server.
    assert connections_received() - opened <= 5


def _send_in_child(group: str) -> None:
    live.group_send(group, {"type": "job.update", "n": "child"})


def test_a_forked_child_sends_on_a_loop_of_its_own() -> None:
    member = new_member("job.live-fork")
    live.group_send("job.live-fork", {"type": "job.update", "n": "parent"})

    child = multiprocessing.get_context("fork").Process(
        target=_send_in_child, args=("job.live-fork",)
    )
    child.start()
    child.join(timeout=20)
    if child.is_alive():
        child.kill()

    assert child.exitcode == 0
    assert [m["n"] for m in member.receive(2)] == ["parent", "child"]


def test_it_refuses_to_block_a_running_event_loop() -> None:
    async def on_a_loop() -> None:
        live.group_send("job.live-refused", {"type": "job.update"})

    with pytest.raises(RuntimeError, match="running event loop"):
        asyncio.run(on_a_loop())


@pytest.fixture
def held_sends(monkeypatch):
    """The channel layer's sends, each first waiting for its number's event (if any)
    and then for its delay: sends that take uneven time, in the test's hands."""
    layer = get_channel_layer()
    real = layer.group_send
    gates: dict[object, threading.Event] = {}
    delays: dict[object, float] = {}
    sent: list[object] = []

    async def held(group: str, message: dict) -> None:
        gate = gates.get(message.get("n"))
        if gate is not None:
            await asyncio.get_running_loop().run_in_executor(None, gate.wait, 10)
        await asyncio.sleep(delays.get(message.get("n"), 0))
        await real(group, message)
        sent.append(message.get("n"))

    monkeypatch.setattr(layer, "group_send", held)
    return gates, delays, sent


def test_updates_not_waited_for_go_out_in_order_however_long_each_takes(held_sends) -> None:
    gates, delays, sent = held_sends
    member = new_member("job.live-uneven")
    gates[0] = threading.Event()
    delays.update({2: 0.03, 5: 0.01, 9: 0.02})

    for n in range(12):
        # Returns at once, although the first send is held until released below.
        live.group_send("job.live-uneven", {"type": "job.update", "n": n}, wait=False)
    assert sent == []  # every later send waits its turn behind the held one
    gates[0].set()
    # A waited send goes after every one handed over before it.
    live.group_send("job.live-uneven", {"type": "job.update", "n": "last"})

    assert [m["n"] for m in member.receive(13)] == [*range(12), "last"]


def test_a_send_held_up_does_not_hold_up_other_groups(held_sends) -> None:
    gates, _, _ = held_sends
    held, free = new_member("job.live-held"), new_member("job.live-free")
    gates["held"] = threading.Event()
    live.group_send("job.live-held", {"type": "job.update", "n": "held"}, wait=False)
    live.group_send("job.live-free", {"type": "job.update", "n": "free"})  # waits: not held
    assert [m["n"] for m in free.receive(1)] == ["free"]
    gates["held"].set()
    assert [m["n"] for m in held.receive(1)] == ["held"]


def test_updates_not_waited_for_are_dropped_past_the_limit(held_sends, monkeypatch, caplog) -> None:
    gates, _, _ = held_sends
    member = new_member("job.live-limit")
    monkeypatch.setattr(live, "MAX_PENDING", 2)
    gates[0] = threading.Event()
    for n in range(4):
        live.group_send("job.live-limit", {"type": "job.update", "n": n}, wait=False)
    gates[0].set()
    live.group_send("job.live-limit", {"type": "job.update", "n": "last"})

    assert [m["n"] for m in member.receive(3)] == [0, 1, "last"]
    assert "dropped an update to job.live-limit" in caplog.text
