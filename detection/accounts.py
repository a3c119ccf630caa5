"""Users and API tokens, for the management commands."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from rest_framework.authtoken.models import Token


def user_token(username: str, password: str | None = None) -> tuple[Any, str, bool]:
    """The user's API token, creating the user (and setting a password) when asked."""
    User = get_user_model()
    with transaction.atomic():
        user, created = User.objects.get_or_create(username=username)
        if created:
            if password is None:
                user.set_unusable_password()
            else:
                user.set_password(password)
            user.save()
        token, _ = Token.objects.get_or_create(user=user)
    return user, token.key, created
