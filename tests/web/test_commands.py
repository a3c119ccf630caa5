"""Management commands that `make run` and users call."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from .conftest import REPO

pytestmark = pytest.mark.django_db(transaction=True)


def manage(*args: str, **env: str) -> list[str]:
    db = settings.DATABASES["default"]
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO, env=dict(os.environ, DATABASE_URL=url, **env),
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return (result.stdout + result.stderr).strip().splitlines()


def test_create_api_tokens_last_line_is_a_working_token() -> None:
    token = manage("create_api_token", "carol")[-1]

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/v1/jobs/").status_code == 200


def test_ensure_demo_user_is_idempotent_and_the_password_logs_in(client) -> None:
    first = manage("ensure_demo_user", DEMO_PASSWORD="s3cret-demo")[-1]
    second = manage("ensure_demo_user", DEMO_PASSWORD="s3cret-demo")[-1]

    assert first == second
    assert client.login(username="demo", password="s3cret-demo")
