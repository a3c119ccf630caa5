"""Probes: /healthz says the process answers; /readyz says it can do its job."""

from __future__ import annotations

import threading
import time
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse

_lock = threading.Lock()
_cached: tuple[float, dict[str, Any]] | None = None


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    checks = _readiness()
    ready = all(check["ok"] for check in checks.values())
    return JsonResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status=200 if ready else 503,
    )


def _readiness() -> dict[str, Any]:
    # Probes come often and a worker ping costs a broadcast round trip: answer from a
    # few seconds' cache, shared by the threads of this process.
    global _cached
    with _lock:
        now = time.monotonic()
        if _cached is not None and now - _cached[0] < settings.SNAPREAD_READY_CACHE_SECONDS:
            return _cached[1]
        checks = {"database": _check_database(), "broker": _check_broker()}
        checks["workers"] = (
            _check_workers() if checks["broker"]["ok"] else {"ok": False, "error": "no broker"}
        )
        _cached = (now, checks)
        return checks


def _check_database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        pending = _pending_migrations()
    except Exception as exc:
        return {"ok": False, "error": str(exc)[:200]}
    if pending:
        # Code ahead of its schema fails requests (a column or function it uses is not
        # there yet): not ready until `manage.py migrate` has run.
        return {
            "ok": False,
            "error": f"{len(pending)} migration(s) not applied, first {pending[0]}; "
            "run manage.py migrate",
        }
    return {"ok": True}


_migrated = False  # once every migration is applied, it stays so for this process


def _pending_migrations() -> list[str]:
    global _migrated
    if _migrated:
        return []
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    pending = [f"{m.app_label}.{m.name}" for m, backwards in plan if not backwards]
    _migrated = not pending
    return pending


def _check_broker() -> dict[str, Any]:
    from project.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=1)
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "error": str(exc)[:200]}


def _check_workers() -> dict[str, Any]:
    from project.celery import app

    try:
        replies = app.control.ping(timeout=1.0)
    except Exception as exc:
        return {"ok": False, "error": str(exc)[:200]}
    names = sorted(name for reply in replies for name in reply)
    return {"ok": bool(names), "workers": names}
