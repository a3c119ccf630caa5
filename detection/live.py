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
_loop_pid = 0


def _publisher_loop() -> asyncio.AbstractEventLoop:
    """This process's loop (a forked child starts its own: threads do not survive fork)."""
    global _loop, _loop_pid
    with _lock:
        if _loop is None or _loop_pid != os.getpid() or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="snapread-live-updates", daemon=True
            )
            thread.start()
            _loop, _loop_pid = loop, os.getpid()
        return _loop


def group_send(group: str, message: dict) -> None:
    """Send `message` to `group` and wait until the channel layer has it. Raises what
    the send raised, or TimeoutError after SEND_TIMEOUT_S (the send is then dropped)."""
    future = asyncio.run_coroutine_threadsafe(
        get_channel_layer().group_send(group, message), _publisher_loop()
    )
    try:
        future.result(timeout=SEND_TIMEOUT_S)
    except FutureTimeout:
        future.cancel()
        raise TimeoutError(f"the channel layer took over {SEND_TIMEOUT_S} s") from None
