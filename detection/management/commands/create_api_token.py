from __future__ import annotations

from django.core.management.base import BaseCommand

from detection.accounts import user_token


class Command(BaseCommand):
    help = "Print an API token for USER (creating USER). The token is the last line."

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("username")

    def handle(self, *args: object, username: str, **options: object) -> None:
        _, key, created = user_token(username)
        if created:
            self.stdout.write(f"Created user {username} (no password; use the token).")
        self.stdout.write(key)
