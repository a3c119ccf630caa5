"""A worker survives the broker connection loss it cannot clean up after (see
project.celery._broker_loss_stays_recoverable; the fault suite kills Redis for real)."""

from __future__ import annotations

import pytest
from django.conf import settings
from kombu import Connection
from kombu.common import ignore_errors

import project.celery  # noqa: F401  (installs the guard, as every worker does)


def test_a_collected_connection_fails_as_a_connection_error_that_celery_ignores() -> None:
    conn = Connection(settings.REDIS_URL)
    try:
        channel = conn.default_channel
        assert channel._connparams()["port"]  # a live connection: its parameters

        channel.connection.client = None  # what Celery's collect() leaves behind
        # Before the guard: AttributeError, which Celery treats as unrecoverable and the
        # worker exits. Now the transport's own connection error, ignored on close.
        with pytest.raises(conn.connection_errors):
            channel._connparams()
        ignore_errors(conn, channel._connparams)  # raises nothing
    finally:
        conn.release()
