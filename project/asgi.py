"""ASGI entry point: HTTP through Django, WebSockets through Channels.

Served by uvicorn as the Procfile says (web).
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Several web processes (the Procfile runs uvicorn --workers N): each writes its
    # metrics to files there that /metrics sums, so it must exist before the first one.
    from detection.metrics import prepare_multiprocess_dir

    prepare_multiprocess_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])

# Django must be set up before anything that imports models.
django.setup(set_prefix=False)

from project.asgi_handler import SyncStackASGIHandler  # noqa: E402

django_asgi_app = SyncStackASGIHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from detection.routing import websocket_urlpatterns  # noqa: E402
from detection.socket_auth import TokenAuthMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(TokenAuthMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)
