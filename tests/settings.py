"""project.settings as the tests run it (pytest's DJANGO_SETTINGS_MODULE).

Only the environment differs: tests use their own Redis database (15 unless
TEST_REDIS_URL says otherwise) and their own media and static folders, so they never
touch what `make run` keeps. pytest-django loads settings before any conftest runs,
which is why this is a settings module and not a conftest.
"""

from __future__ import annotations

import os
import tempfile
from urllib.parse import urlparse, urlunparse


def _test_redis_url() -> str:
    if os.environ.get("TEST_REDIS_URL"):
        return os.environ["TEST_REDIS_URL"]
    parsed = urlparse(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    return urlunparse(parsed._replace(path="/15"))


os.environ["REDIS_URL"] = _test_redis_url()
os.environ["MEDIA_ROOT"] = tempfile.mkdtemp(prefix="snapread-test-media-")
os.environ.setdefault("SNAPREAD_SUBMIT_RATE", "100000/min")
os.environ["SNAPREAD_HTTPS"] = "0"
os.environ["STATIC_ROOT"] = tempfile.mkdtemp(prefix="snapread-test-static-")

from project.settings import *  # noqa: E402, F403

# pytest-django creates and drops the test database from this process: plain connections
# here. The servers the tests start (workers, daphne) run project.settings, pool and all.
DATABASES["default"]["OPTIONS"].pop("pool", None)  # noqa: F405
