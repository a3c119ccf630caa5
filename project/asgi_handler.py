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
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase


class SyncStackASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)
