"""The Celery app: `celery -A project worker|beat|flower`.

Configured from Django settings (the CELERY_* names), so web, worker and beat read
one configuration. Tasks live in workers.tasks.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from celery import Celery
from celery.signals import after_setup_logger

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("snapread", include=["workers.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")


@after_setup_logger.connect
def _make_beat_schedule_dir(**_: object) -> None:
    # Beat opens its schedule file before any beat signal fires; logging setup comes first.
    with contextlib.suppress(OSError):
        Path(app.conf.beat_schedule_filename).parent.mkdir(parents=True, exist_ok=True)
