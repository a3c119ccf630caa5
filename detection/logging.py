"""Structured logs: one JSON object per line, each carrying the job and request it is about.

The job id and the request id live in context variables: the API binds the job a request
is about, the worker binds the job a task reads (project.celery), and `ContextFilter`
copies both onto every record, so a line logged anywhere below (detection.jobs, the
chain, Django, Celery) says which job it concerns without passing ids around.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

# A client's own X-Request-ID is kept when it looks like an id, so a trace can start
# outside; anything else (too long, odd characters) is replaced rather than logged.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

READ_JOB_TASK = "workers.tasks.read_job"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# Attributes every LogRecord has; whatever else a record carries came from `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


@contextlib.contextmanager
def bound_job(job_id: object) -> Iterator[None]:
    """Every line logged inside carries this job id."""
    token = job_id_var.set(str(job_id))
    try:
        yield
    finally:
        job_id_var.reset(token)


def bind_job(job_id: object) -> None:
    """Bind a job for the rest of the current context (a request, a task)."""
    job_id_var.set(str(job_id))


def new_request_id(incoming: str | None) -> str:
    if incoming and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


class ContextFilter(logging.Filter):
    """Adds `job_id`, `request_id` and, inside a Celery task, `task_id` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id_var.get() or _job_of_task_message(record)
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        if getattr(record, "task_id", None) is None:
            record.task_id = _current_task_id() or _task_data(record).get("id")
        return True


def _task_data(record: logging.LogRecord) -> dict:
    # Celery's own lines about a task ("received", "succeeded", "raised") carry the task
    # in `data`, its arguments as text.
    data = getattr(record, "data", None)
    return data if isinstance(data, dict) else {}


def _job_of_task_message(record: logging.LogRecord) -> str | None:
    data = _task_data(record)
    if data.get("name") != READ_JOB_TASK:
        return None
    match = _UUID.search(str(data.get("args", "")))
    return match.group(0) if match else None


def _current_task_id() -> str | None:
    try:
        from celery import current_task
    except ImportError:  # pragma: no cover - celery is always installed with the web
        return None
    request = getattr(current_task, "request", None) if current_task else None
    return getattr(request, "id", None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context ids, and
    whatever the call passed in `extra=`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("job_id", "request_id", "task_id"):
            entry[key] = getattr(record, key, None)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def use_json(logger: logging.Logger) -> None:
    """Make every handler of `logger` write JSON with the context ids (for loggers
    configured by someone else, such as Celery's)."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
