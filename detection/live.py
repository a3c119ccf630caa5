"""Telling a job's watchers about a change: a send to its channel-layer group, from
synchronous code.

`async_to_sync(layer.group_send)` called on a thread without an event loop (a Celery
task, the sweeper, a management command) runs a new loop for that one call, and
channels-redis keeps its Redis connections per loop: every update opened and closed a
connection, about 7 ms each, five or six times per job. Here each process has one loop
on a thread of its own that keeps its connections; callers hand it the send and wait
for it, so one caller's updates still reach Redis in the order they were made.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import TimeoutError as FutureTimeout

from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 2.0

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _forget_after_fork() -> None:
    # The loop's thread did not survive the fork, and the lock may have been held by
    # another thread at that moment: a child starts afresh.
    global _lock, _loop
    _lock = threading.Lock()
    _loop = None


os.register_at_fork(after_in_child=_forget_after_fork)


def _publisher_loop() -> asyncio.AbstractEventLoop:
    """This process's loop, started on first use."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="snapread-live-updates", daemon=True
            )
            thread.start()
            _loop = loop
        return _loop


def group_send(group: str, message: dict) -> None:
    """Send `message` to `group` and wait until the channel layer has it. Raises what
    the send raised, or TimeoutError after SEND_TIMEOUT_S (the send is then dropped).
    Synchronous callers only: code on an event loop awaits the channel layer itself."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("live.group_send would block a running event loop; await instead")
    future = asyncio.run_coroutine_threadsafe(
        get_channel_layer().group_send(group, message), _publisher_loop()
    )
    try:
        future.result(timeout=SEND_TIMEOUT_S)
    except FutureTimeout:
        future.cancel()
        raise TimeoutError(f"the channel layer took over {SEND_TIMEOUT_S} s") from None
