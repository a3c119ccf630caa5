"""Django's PostgreSQL backend, with a pool that checks its connections without a
round trip to the server when it can (``ENGINE = "project.postgres"``)."""

from __future__ import annotations

import select

import psycopg
from django.db.backends.postgresql import base
from psycopg_pool import ConnectionPool


def check_connection(conn: psycopg.Connection) -> None:
    """Raise if `conn` can no longer be used; a round trip to the server only when in doubt.

    An idle connection's socket has nothing to read: the server speaks when asked, and
    otherwise only to say it is going away (a shutdown's FATAL message, end-of-file when
    its backend dies or is terminated) or to pass on a notice. So a socket with nothing
    to read is handed out as it is, and one with something to read gets psycopg_pool's
    own check, an empty statement, which raises on a connection the server has closed
    (and reads a notice). psycopg_pool's check makes that round trip on every request's
    connection (docs/benchmarks.md has what it cost). A restarted database still costs a
    reconnect, not a failed request. What neither sees is a server gone without a word
    (a cable pulled); the statement then fails, as it would have after the check.
    """
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLPRI)
    if poller.poll(0):
        ConnectionPool.check_connection(conn)


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self) -> ConnectionPool | None:
        pool = super().pool
        # Django gives its pool psycopg_pool's check when CONN_HEALTH_CHECKS is on and
        # has no setting for another; psycopg-pool (pinned) keeps it in `_check`.
        if pool is not None and self.settings_dict["CONN_HEALTH_CHECKS"]:
            pool._check = check_connection
        return pool
