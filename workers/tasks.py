"""Celery tasks: thin entry points that fetch by id and call detection.jobs.

The message carries only a job id. The row decides what happens: a message for a job
that is not queued any more (a duplicate, a late re-delivery) claims nothing and ends.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import asdict

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.db import DatabaseError

from detection import jobs
from workers import worker_chain

log = logging.getLogger(__name__)


class JobLost(Exception):
    """The job was canceled, deleted or taken back while this worker ran it."""


@shared_task(name="workers.tasks.read_job", bind=True)
def read_job(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
    claim = jobs.job_claim(job_id, self.request.hostname or socket.gethostname())
    if claim is None:
        return "not queued"

    def on_stage(stage: str) -> None:
        if not jobs.job_advance_stage(claim, stage):
            raise JobLost(stage)

    try:
        reading = worker_chain.read(claim, on_stage)
    except JobLost:
        return "lost"
    except SoftTimeLimitExceeded:
        jobs.job_fail(claim, "time_limit", "Reading took longer than the time limit.")
        return "failed"
    except worker_chain.PackUnavailable as exc:
        jobs.job_fail(claim, "pack_unavailable", str(exc))
        return "failed"
    except worker_chain.ReadingTooLarge as exc:
        jobs.job_fail(claim, exc.code, str(exc))
        return "failed"
    except DatabaseError:
        # Our database failed (a restart, a failover), not the image: failing the job
        # would blame the upload. It stays running; its lease runs out and the sweeper
        # gives it another attempt on a fresh connection.
        log.exception("database error while reading job %s; the sweeper will retry it", job_id)
        return "database_error"
    except Exception as exc:
        log.exception("reading job %s failed", job_id)
        jobs.job_fail(claim, "reader_error", f"The reader failed: {type(exc).__name__}: {exc}")
        return "failed"
    if not reading.relevant:
        return "rejected" if jobs.job_reject(claim, reading) else "lost"
    return "succeeded" if jobs.job_complete(claim, reading) else "lost"


@shared_task(name="workers.tasks.sweep")
def sweep() -> dict[str, int]:
    report = jobs.sweep()
    if report.resent or report.requeued or report.failed:
        log.warning("sweep: %s", report)
    return asdict(report)
