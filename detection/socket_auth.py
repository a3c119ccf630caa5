"""`?token=` authentication for WebSocket clients that cannot send a session cookie."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware


@database_sync_to_async
def _user_for_token(key: str) -> Any | None:
    from rest_framework.authtoken.models import Token

    token = Token.objects.select_related("user").filter(key=key).first()
    if token is None or not token.user.is_active:
        return None
    return token.user


class TokenAuthMiddleware(BaseMiddleware):
    """Sits inside AuthMiddlewareStack: a token, when given, decides the user."""

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        query = parse_qs(scope.get("query_string", b"").decode("latin1"))
        if "token" in query:
            from django.contrib.auth.models import AnonymousUser

            user = await _user_for_token(query["token"][0])
            scope = dict(scope, user=user or AnonymousUser())
        return await super().__call__(scope, receive, send)
