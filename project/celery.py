"""The Celery app: `celery -A project worker|beat|flower`.

Configured from Django settings (the CELERY_* names), so web, worker and beat read
one configuration. Tasks live in workers.tasks. The signal handlers below give every
worker its logs (JSON, with the job id) and its metrics (workers.metrics), so the tasks
themselves stay thin.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("snapread", include=["workers.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")

READ_JOB_TASK = "workers.tasks.read_job"
log = logging.getLogger(__name__)


def _broker_loss_stays_recoverable() -> None:
    """Keep a worker alive through a Redis restart that finds tasks unacknowledged.

    On a broker connection loss Celery collects the connection, then closes it, ignoring
    connection errors. Closing kombu's Redis channel restores its unacknowledged messages
    through the channel's transport; once the connection has been collected that
    transport has no client, and building its connection parameters raised
    AttributeError ('NoneType' object has no attribute 'hostname'). Celery took that for
    an unrecoverable error and the worker exited (seen in the fault suite: Redis killed
    with five tasks unacked; kombu 5.7, Celery 5.7). Raising the transport's own
    connection error instead lets Celery ignore it and reconnect. The messages that were
    not restored are in Redis's unacked index (restored after the visibility timeout) or,
    with Redis restarted empty, gone; the sweeper re-sends every job still queued.
    """
    from kombu.transport import redis as kombu_redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    channel = kombu_redis.Channel
    if getattr(channel._connparams, "_snapread", False):
        return
    original = channel._connparams

    def _connparams(self: Any, asynchronous: bool = False) -> dict:
        if getattr(self.connection, "client", None) is None:
            raise RedisConnectionError("the broker connection was closed after a loss")
        return original(self, asynchronous=asynchronous)

    _connparams._snapread = True  # type: ignore[attr-defined]
    channel._connparams = _connparams


_broker_loss_stays_recoverable()


@after_setup_logger.connect
def _make_beat_schedule_dir(**_: object) -> None:
    # Beat opens its schedule file before any beat signal fires; logging setup comes first.
    with contextlib.suppress(OSError):
        Path(app.conf.beat_schedule_filename).parent.mkdir(parents=True, exist_ok=True)


# -- logs -----------------------------------------------------------------------------


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_as_configured(logger: logging.Logger, **_: object) -> None:
    # Celery sets up its own handlers (with -l and --logfile); only their format changes.
    from django.conf import settings

    from detection.logging import ContextFilter, use_json

    if settings.LOG_FORMAT == "json":
        use_json(logger)
    else:
        for handler in logger.handlers:
            handler.addFilter(ContextFilter())


_job_tokens: dict[str, contextvars.Token] = {}


@task_prerun.connect
def _bind_job(task_id: str, task: Any, args: Any = (), **_: object) -> None:
    if task.name == READ_JOB_TASK and args:
        from detection.logging import job_id_var

        _job_tokens[task_id] = job_id_var.set(str(args[0]))


# -- metrics --------------------------------------------------------------------------


@task_postrun.connect
def _after_task(task_id: str, task: Any, args: Any = (), retval: Any = None, **_: object) -> None:
    if task.name != READ_JOB_TASK:
        return
    try:
        _observe_read(str(args[0]) if args else "", retval)
    except Exception:
        # Metrics never fail a job.
        log.warning("could not record the metrics of task %s", task_id, exc_info=True)
    finally:
        token = _job_tokens.pop(task_id, None)
        if token is not None:
            from detection.logging import job_id_var

            job_id_var.reset(token)


def _observe_read(job_id: str, retval: Any) -> None:
    from detection.models import Job
    from workers import metrics

    status = retval if isinstance(retval, str) else "error"
    metrics.observe_job(status)
    metrics.observe_gpu_memory()
    if status not in ("succeeded", "rejected", "failed") or not job_id:
        return
    row = (
        Job.objects.filter(id=job_id)
        .values("timings_ms", "created_at", "started_at", "finished_at")
        .first()
    )
    if row is None:
        return
    for stage, ms in (row["timings_ms"] or {}).items():
        metrics.observe_stage(stage, float(ms) / 1000.0)
    started, finished = row["started_at"], row["finished_at"]
    metrics.observe_times(
        status,
        (started - row["created_at"]).total_seconds() if started else None,
        (finished - started).total_seconds() if started and finished else None,
    )


_metrics_server: Any = None


@worker_init.connect
def _prepare_metrics(sender: Any = None, **_: object) -> None:
    # In the main process, before the pool forks: stale per-process files from an earlier
    # run would otherwise be summed into this one's counters.
    from django.conf import settings

    from workers import metrics

    if not settings.WORKER_METRICS_PORT:
        return
    directory = metrics.multiprocess_dir()
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        metrics.clear_stale_files(directory)
    elif getattr(sender, "pool_cls", None) and "prefork" in str(sender.pool_cls).lower():
        log.error(
            "WORKER_METRICS_PORT is set but PROMETHEUS_MULTIPROC_DIR is not: the prefork "
            "pool's children record metrics this process cannot see. Set it to an empty "
            "directory of this worker's own, or run with -P threads."
        )


@worker_ready.connect
def _serve_metrics(**_: object) -> None:
    global _metrics_server
    from django.conf import settings

    from workers import metrics

    port = settings.WORKER_METRICS_PORT
    if not port:
        return
    queues = {settings.CELERY_TASK_DEFAULT_QUEUE}
    queues |= {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    registry = metrics.scrape_registry(settings.CELERY_BROKER_URL, queues)
    try:
        _metrics_server = metrics.serve(port, settings.WORKER_METRICS_ADDR, registry)
    except OSError:
        log.exception("could not serve worker metrics on port %s", port)
        return
    log.info("worker metrics on http://%s:%s/metrics", settings.WORKER_METRICS_ADDR, port)


@worker_shutdown.connect
def _stop_serving_metrics(**_: object) -> None:
    if _metrics_server is not None:
        _metrics_server.shutdown()


@worker_process_shutdown.connect
def _forget_child(pid: int | None = None, **_: object) -> None:
    # A dead child's live gauges (GPU memory) must stop counting.
    from workers import metrics

    metrics.mark_process_dead(pid or os.getpid())
