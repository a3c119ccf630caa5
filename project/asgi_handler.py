"""Django's ASGI handler with each request's synchronous work in one thread hop.

Every view and nearly every middleware here is synchronous. Under Django's own ASGI
handler the middleware chain is built for async: each synchronous piece then runs in a
``sync_to_async`` hop of its own (a middleware's ``process_request`` and
``process_response``, each ``process_view``, the view), and WhiteNoise, which is
synchronous only, turns part of the chain back with ``async_to_sync``: about a dozen
handovers between the event loop and the request's thread per request. This handler
builds the chain as WSGI does and runs the whole of it, view included, in one hop on the
request's thread (thread-sensitive, so database connections stay per thread, as Django
expects). Reading the body and sending the response stay on the event loop.

The request's thread is taken from a pool and given back, not made for it: Django
enters a fresh ``ThreadSensitiveContext`` per request, which starts a thread for the
request's first hop and, at the end, a second thread to join the first. Here the
context gets an executor of one thread that served an earlier request (asgiref's
``ThreadSensitiveContext(executor=...)``), as a WSGI server's worker threads serve
request after request; Django's request signals close or return the database
connection at each request's end as they do there. An executor still running a hop
when its request ends (the server cancelled the request mid-view) is not reused: it
finishes that hop, closes its database connections (the request's end signal never ran)
and its thread ends.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponseBase

# Idle request threads kept for reuse; a burst beyond this ends its extra threads.
MAX_IDLE_THREADS = 32
_numbers = itertools.count(1)


class RequestThread(ThreadPoolExecutor):
    """One thread that runs a request's hops in turn, and knows when it has none."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix=f"request-{next(_numbers)}")
        self._lock = threading.Lock()
        self._running = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            self._running += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Future[Any] | None) -> None:
        with self._lock:
            self._running -= 1

    @property
    def idle(self) -> bool:
        with self._lock:
            return self._running == 0


class SyncStackASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self._idle: list[RequestThread] = []

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        try:
            thread = self._idle.pop()
        except IndexError:
            thread = RequestThread()
        try:
            async with ThreadSensitiveContext(executor=thread):
                await self.handle(scope, receive, send)
        finally:
            if thread.idle and len(self._idle) < MAX_IDLE_THREADS:
                self._idle.append(thread)
            else:
                # Queued behind whatever the thread still runs, on that same thread: its
                # connections go back even when the request's end signal never ran.
                thread.submit(close_old_connections)
                thread.shutdown(wait=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)
