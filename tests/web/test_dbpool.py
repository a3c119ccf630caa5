"""The database pool's check of the connections it hands out (project/postgres), on
the real PostgreSQL: no round trip for a healthy idle connection, a fresh connection in
place of one whose server side has gone."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator

import psycopg
import pytest
from django.db import connection
from psycopg_pool import ConnectionPool

from project.postgres.base import DatabaseWrapper, check_connection

pytestmark = pytest.mark.django_db


def connect_kwargs() -> dict:
    # What Django's pool connects with (django/db/backends/postgresql/base.py).
    return dict(connection.get_connection_params(), autocommit=True)


@pytest.fixture
def observer() -> Iterator[psycopg.Connection]:
    with psycopg.connect(**connect_kwargs()) as conn:
        yield conn


def last_statement(observer: psycopg.Connection, pid: int) -> str:
    row = observer.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    return row[0]


def one_connection_pool(check) -> ConnectionPool:
    return ConnectionPool(kwargs=connect_kwargs(), min_size=1, max_size=1, check=check, open=True)


@pytest.mark.parametrize(
    ("check", "round_trip"),
    [(check_connection, False), (ConnectionPool.check_connection, True)],
    ids=["ours", "psycopg_pool's"],
)
def test_a_healthy_idle_connection_is_handed_out_without_a_round_trip(
    observer, check, round_trip
) -> None:
    with one_connection_pool(check) as pool:
        with pool.connection() as conn:
            [pid] = conn.execute("SELECT pg_backend_pid() /* marker */").fetchone()
        with pool.connection() as conn:  # checked on the way out
            assert conn.info.backend_pid == pid
            seen = last_statement(observer, pid)
            assert conn.execute("SELECT 1").fetchone() == (1,)
    # psycopg_pool's own check sends an empty statement; ours sends nothing.
    assert (seen == "") is round_trip
    assert ("marker" in seen) is not round_trip


def wait_until_readable(conn: psycopg.Connection, timeout: float = 5.0) -> None:
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    assert poller.poll(int(timeout * 1000)), "the server never said it closed the connection"


def test_a_connection_whose_backend_is_gone_is_replaced(observer) -> None:
    with one_connection_pool(check_connection) as pool:
        with pool.connection() as conn:
            [pid] = conn.execute("SELECT pg_backend_pid()").fetchone()
            kept = conn
        observer.execute("SELECT pg_terminate_backend(%s)", [pid])
        wait_until_readable(kept)
        started = time.monotonic()
        with pool.connection() as conn:  # the pool drops it and connects anew
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.info.backend_pid != pid
        assert time.monotonic() - started < 5


def test_the_check_fails_a_connection_whose_backend_is_gone(observer) -> None:
    with psycopg.connect(**connect_kwargs()) as conn:
        observer.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
        wait_until_readable(conn)
        with pytest.raises(psycopg.OperationalError):
            check_connection(conn)


def test_a_closed_connection_fails_the_check() -> None:
    conn = psycopg.connect(**connect_kwargs())
    conn.close()
    with pytest.raises(psycopg.OperationalError, match="closed"):
        check_connection(conn)


def test_djangos_pool_checks_with_it(observer) -> None:
    settings = dict(connection.settings_dict, CONN_HEALTH_CHECKS=True)
    settings["OPTIONS"] = dict(settings["OPTIONS"], pool={"min_size": 1, "max_size": 1})
    wrapper = DatabaseWrapper(settings, alias="pool_check")
    try:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid() /* marker */")
            [pid] = cursor.fetchone()
        wrapper.close()  # back to the pool
        with wrapper.cursor() as cursor:  # taken from the pool again, checked
            seen = last_statement(observer, pid)
            cursor.execute("SELECT pg_backend_pid()")
            assert cursor.fetchone() == (pid,)
    finally:
        wrapper.close()
        wrapper.close_pool()
    assert "marker" in seen  # with psycopg_pool's check it is the empty statement
