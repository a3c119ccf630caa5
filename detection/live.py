"""Telling a job's watchers about a change: a send to its channel-layer group, from
synchronous code.

`async_to_sync(layer.group_send)` called on a thread without an event loop (a Celery
task, the sweeper, a management command) runs a new loop for that one call, and
channels-redis keeps its Redis connections per loop: every update opened and closed a
connection, about 7 ms each, five or six times per job. Here each process has one loop
on a thread of its own that keeps its connections, and callers hand it the send.

Sends to one group go out one after another in the order they were handed over, each
after the one before it has finished (or given up), so a job's watchers see its states
in order however long any one send takes. A caller may wait for its send (a job's
outcome: the worker does not go on until its watchers can know) or not (a running
job's progress: the worker's thread goes back to the job at once).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 2.0
# Sends not waited for that may be on their way at once; past this (a Redis that does
# not answer) new ones are dropped, with a warning, instead of piling up.
MAX_PENDING = 1000

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pending = 0
# The last send handed over for each group (touched on the loop's thread only).
_tails: dict[str, asyncio.Future[None]] = {}


def _forget_after_fork() -> None:
    # The loop's thread did not survive the fork, and the lock may have been held by
    # another thread at that moment: a child starts afresh.
    global _lock, _loop, _pending
    _lock = threading.Lock()
    _loop = None
    _pending = 0
    _tails.clear()


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


async def _send_in_order(group: str, message: dict) -> None:
    # Tasks start in the order they were handed over, so each takes its place in the
    # group's line before any of them awaits.
    previous = _tails.get(group)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    _tails[group] = done
    try:
        if previous is not None:
            await asyncio.shield(previous)
        await asyncio.wait_for(get_channel_layer().group_send(group, message), SEND_TIMEOUT_S)
    finally:
        done.set_result(None)
        if _tails.get(group) is done:
            del _tails[group]


def group_send(group: str, message: dict, wait: bool = True) -> None:
    """Send `message` to `group`, after every send handed over for the group before it.

    With `wait`, return once the channel layer has it; raise what the send raised, or
    TimeoutError after SEND_TIMEOUT_S (the send is then dropped). Without, return at
    once; a failure is logged. Synchronous callers only: code on an event loop awaits
    the channel layer itself."""
    global _pending
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("live.group_send would block a running event loop; await instead")
    if not wait:
        with _lock:
            if _pending >= MAX_PENDING:
                log.warning("dropped an update to %s: %d sends are on their way", group, _pending)
                return
            _pending += 1
    future = asyncio.run_coroutine_threadsafe(_send_in_order(group, message), _publisher_loop())
    if not wait:
        future.add_done_callback(_sent)
        return
    try:
        future.result(timeout=SEND_TIMEOUT_S)
    except FutureTimeout:
        future.cancel()
        raise TimeoutError(f"the channel layer took over {SEND_TIMEOUT_S} s") from None


def _sent(future: Future[None]) -> None:
    global _pending
    with _lock:
        _pending -= 1
    if not future.cancelled() and future.exception() is not None:
        log.warning("could not send an update: %r", future.exception())
