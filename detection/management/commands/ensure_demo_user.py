from __future__ import annotations

import os

from django.core.management.base import BaseCommand

from detection.accounts import user_token


class Command(BaseCommand):
    help = "Create user `demo` (password $DEMO_PASSWORD, default demo) once; print its token last."

    def handle(self, *args: object, **options: object) -> None:
        password = os.environ.get("DEMO_PASSWORD") or "demo"
        user, key, created = user_token("demo", password)
        if not created and not user.has_usable_password():
            user.set_password(password)
            user.save(update_fields=["password"])
        state = "created" if created else "exists"
        self.stdout.write(f"User demo {state}; log in at /accounts/login/ with DEMO_PASSWORD.")
        self.stdout.write(key)
