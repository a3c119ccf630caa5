"""The one module that changes a job's state.

    queued -> running -> succeeded | rejected | failed;  queued | running -> canceled

Every transition is a conditional update (WHERE status = ... [AND attempts = claim]),
so a duplicate message, a late worker or a second click changes nothing and says so by
returning False or None. Every change after the job's creation is published to the
job's channel-layer group after commit, and the Celery message is sent after commit,
carrying only the job id.

What must survive a crash of PostgreSQL commits durably: the job's acceptance, each
claim (its attempt number fences stale workers and counts towards the attempt limit),
the results, a failure, a cancelation, the sweeper's moves. A running attempt's progress
(each stage, each lease renewal) commits without waiting for the disk
(``durable=False``): a crash, or a failover to a standby, may undo the last fraction of
a second of it, which loses nothing: the attempt is found at an earlier stage, its
lease runs out and the sweeper takes it back. A later durable commit on the server makes
every earlier one durable with it (the WAL is flushed in order).
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import EmptyResultSet
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, connection, connections, router, transaction
from django.db.models import BooleanField, F, QuerySet
from django.db.models.expressions import RawSQL
from django.db.models.fields.files import FieldFile
from django.db.models.sql import UpdateQuery
from django.utils import timezone
from PIL import Image

from detection import live
from detection.annotate import annotate
from detection.models import TERMINAL, UNFINISHED, Job, Region, Stage, Status
from detection.selectors import job_by_idempotency_key, job_group, job_payload
from detection.uploads import NormalizedImage

log = logging.getLogger(__name__)

READ_JOB_TASK = "workers.tasks.read_job"
READ_QUEUE = "gpu"


class JobError(Exception):
    """A refused request about a job, with a stable code for the API."""

    code = "job_error"

    def __init__(self, message: str, **detail: object) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class NotCancelable(JobError):
    code = "not_cancelable"


class TooManyUnfinishedJobs(JobError):
    code = "too_many_unfinished_jobs"


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one attempt of a job; later writes must present it."""

    job_id: uuid.UUID
    attempt: int
    worker_host: str
    image_name: str


@dataclass(frozen=True)
class RegionReading:
    box: tuple[float, float, float, float]
    label: str
    score: float
    text: str
    confidence: float
    crop_png: bytes


@dataclass(frozen=True)
class Reading:
    """What the chain said about one job's image, in plain values (no torch, no PIL)."""

    label: str
    score: float
    relevant: bool
    pack_name: str
    pack_version: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    regions: list[RegionReading] = field(default_factory=list)


@dataclass
class SweepReport:
    resent: int = 0
    requeued: int = 0
    failed: int = 0


# -- submit ---------------------------------------------------------------------------


def job_submit(owner: Any, image: NormalizedImage, idempotency_key: str = "") -> tuple[Job, bool]:
    """Store the image and a queued job; returns (job, created).

    With an idempotency key already used by this owner, the earlier job comes back and
    nothing is stored.
    """
    existing = job_by_idempotency_key(owner, idempotency_key)
    if existing is not None:
        return existing, False
    job_id = uuid.uuid4()
    try:
        with transaction.atomic():
            # The cap is checked before the file is written, so a refused user leaves none;
            # the file is written before the row that names it, inside the transaction
            # (a failed commit removes it below).
            _check_unfinished_cap(owner)
            name = default_storage.save(
                f"jobs/{job_id}/input.{image.extension}", ContentFile(image.data)
            )
            job = Job.objects.create(
                id=job_id,
                owner=owner,
                image=name,
                image_width=image.width,
                image_height=image.height,
                image_sha256=image.sha256,
                idempotency_key=idempotency_key,
            )
            # Not published: the job's group has no one in it yet, since no client can
            # know the id before this request answers.
            transaction.on_commit(lambda: _send(job_id))
    except IntegrityError:
        _remove_files(str(job_id))
        # Two requests raced with the same key: the other one won.
        existing = job_by_idempotency_key(owner, idempotency_key)
        if existing is not None:
            return existing, False
        raise
    except BaseException:
        _remove_files(str(job_id))
        raise
    return job, True


def _check_unfinished_cap(owner: Any) -> None:
    """Refuse a submit over the owner's cap on unfinished jobs; call inside the insert's
    transaction.

    The count is exact and cannot be raced: a transaction-scoped advisory lock keyed by
    the owner serialises one owner's submits (count, insert, commit) across every web
    process, and other owners never wait. The lock and the count are one round trip, a
    function whose count runs after the lock is granted (migration 0003 says why a plain
    statement cannot). PostgreSQL is the truth here, not a Redis counter: a counter
    drifts when a terminal transition's decrement is lost (Redis down, a process killed
    between commit and decrement) and would then refuse a user wrongly for as long as it
    stays wrong; and submits keep working while Redis is down.
    """
    limit = settings.SNAPREAD_MAX_UNFINISHED_JOBS
    with connection.cursor() as cursor:
        # A hash collision only makes two owners' submits take turns.
        cursor.execute(
            "SELECT snapread_unfinished_after_lock(%s, %s, %s)",
            [f"snapread:unfinished-cap:{owner.pk}", owner.pk, [str(s) for s in UNFINISHED]],
        )
        [unfinished] = cursor.fetchone()
    if unfinished >= limit:
        raise TooManyUnfinishedJobs(
            f"You have {unfinished} unfinished jobs and the limit is {limit}; "
            "wait for some to finish or cancel some.",
            limit=limit,
        )


# -- the worker's side ----------------------------------------------------------------


def job_claim(job_id: uuid.UUID | str, worker_host: str) -> Claim | None:
    """Take a queued job for one attempt; None when it is not queued (duplicate, late)."""
    now = timezone.now()
    job = _update_returning(
        Job.objects.filter(id=job_id, status=Status.QUEUED),
        status=Status.RUNNING,
        stage="",
        attempts=F("attempts") + 1,
        lease_expires_at=now + _lease(),
        worker_host=worker_host[:255],
        started_at=now,
    )
    if job is None:
        return None
    return Claim(job.id, job.attempts, worker_host, job.image.name)


def job_advance_stage(claim: Claim, stage: str) -> bool:
    """Record the stage now running and renew the lease; False when the claim is stale."""
    if stage not in Stage.values:
        raise ValueError(f"unknown stage {stage!r}")
    return _running_update(
        claim, durable=False, stage=stage, lease_expires_at=timezone.now() + _lease()
    )


def job_renew_lease(claim: Claim) -> bool:
    return _running_update(claim, durable=False, lease_expires_at=timezone.now() + _lease())


def job_complete(claim: Claim, reading: Reading) -> bool:
    """Write the results, every region with its crop, in one transaction; False if not
    ours.

    Two statements: the update that finishes the job, only while this attempt still
    holds it (the fence, and the row lock until commit), and the regions' insert, crops
    in their rows. A job that is no longer ours (canceled, taken back, deleted) gets
    none of it, and nothing is left behind.
    """
    with transaction.atomic():
        job = _update_returning(
            _claimed(claim), publish=False, **_reading_values(reading, Status.SUCCEEDED)
        )
        if job is None:
            return False
        regions = [
            Region(
                job=job, index=index, x0=float(r.box[0]), y0=float(r.box[1]),
                x1=float(r.box[2]), y1=float(r.box[3]), label=r.label, score=r.score,
                crop_png=r.crop_png, text=r.text, confidence=r.confidence,
            )
            for index, r in enumerate(reading.regions)
        ]  # fmt: skip
        Region.objects.bulk_create(regions)
        _after_commit_publish(job, regions)
    return True


def job_annotated_image(job: Job) -> FieldFile | None:
    """The succeeded job's photo with its regions drawn on it, rendered on first request
    and kept; None for a job that did not succeed. Two first requests at once may both
    render; one conditional update keeps one file and the other is removed."""
    if job.annotated_image:
        return job.annotated_image
    if job.status != Status.SUCCEEDED:
        return None
    boxes = list(job.regions.order_by("index").values_list("x0", "y0", "x1", "y1"))
    with default_storage.open(job.image.name, "rb") as stored:
        image = Image.open(stored)
        image.load()
    name = default_storage.save(
        f"{job.media_dir}/annotated.jpg", ContentFile(annotate(image, boxes))
    )
    kept = Job.objects.filter(id=job.id, status=Status.SUCCEEDED, annotated_image="").update(
        annotated_image=name
    )
    if not kept:
        default_storage.delete(name)
    job.refresh_from_db(fields=["annotated_image"])
    return job.annotated_image or None


def job_reject(claim: Claim, reading: Reading) -> bool:
    """The classifier judged the image not relevant: no detection ran."""
    return (
        _update_returning(_claimed(claim), **_reading_values(reading, Status.REJECTED)) is not None
    )


def job_fail(claim: Claim, code: str, message: str) -> bool:
    return _running_update(
        claim,
        status=Status.FAILED,
        stage="",
        error_code=code[:64],
        error_message=message,
        lease_expires_at=None,
        finished_at=timezone.now(),
    )


# -- the owner's side -----------------------------------------------------------------


def job_cancel(job_id: uuid.UUID | str, owner: Any) -> Job:
    """Cancel an unfinished job of this owner. A running chain stops at its next stage."""
    with transaction.atomic():
        changed = Job.objects.filter(id=job_id, owner=owner, status__in=UNFINISHED).update(
            status=Status.CANCELED, stage="", lease_expires_at=None, finished_at=timezone.now()
        )
        job = Job.objects.get(id=job_id, owner=owner)
        if not changed:
            raise NotCancelable(f"The job is {job.status}; only queued or running jobs cancel.")
        _after_commit_publish(job)
    return job


def job_delete(job_id: uuid.UUID | str, owner: Any) -> None:
    """Delete the job, its regions and every stored file of it."""
    with transaction.atomic():
        # The lock makes a worker completing right now either finish first (and its
        # files are removed with the rest) or find no row and write nothing.
        job = Job.objects.select_for_update().get(id=job_id, owner=owner)
        job.delete()
        transaction.on_commit(lambda: _remove_files(str(job_id)))
        transaction.on_commit(lambda: _publish(str(job_id), None))


# -- operators ------------------------------------------------------------------------


def job_rerun(job_id: uuid.UUID | str) -> bool:
    """Send a finished job through the chain again (the admin's re-run); False when the
    job is not finished.

    In one transaction the job goes back to queued and loses its regions and results; the
    message and the removal of the old annotated image follow the commit (the old crops
    go with their rows).
    `attempts` keeps counting, so a claim from an earlier run stays stale.
    """
    now = timezone.now()
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(id=job_id, status__in=TERMINAL).first()
        if job is None:
            return False
        old_files = [job.annotated_image.name] if job.annotated_image else []
        changed = Job.objects.filter(id=job_id, status__in=TERMINAL).update(
            status=Status.QUEUED,
            stage="",
            classification_label="",
            classification_score=None,
            classification_relevant=None,
            error_code="",
            error_message="",
            annotated_image="",
            timings_ms={},
            pack_name="",
            pack_version="",
            lease_expires_at=None,
            worker_host="",
            started_at=None,
            finished_at=None,
            enqueued_at=now,
        )
        if not changed:
            return False
        Region.objects.filter(job_id=job_id).delete()
        _after_commit_publish(Job.objects.get(id=job_id))
        transaction.on_commit(lambda: _send(job_id))
        transaction.on_commit(lambda: _delete_files(old_files))
    log.info("job %s re-run", job_id, extra={"job_id": str(job_id)})
    return True


# -- the sweeper ----------------------------------------------------------------------


def job_resend(job_id: uuid.UUID | str, queued_before: Any) -> bool:
    """Send a job's message again if it is still queued since before the given time."""
    with transaction.atomic():
        changed = Job.objects.filter(
            id=job_id, status=Status.QUEUED, enqueued_at__lt=queued_before
        ).update(enqueued_at=timezone.now())
        if changed:
            transaction.on_commit(lambda: _send(job_id))
    return bool(changed)


def job_requeue(job_id: uuid.UUID | str) -> bool:
    """Take back a running job whose lease ran out, while it has attempts left."""
    now = timezone.now()
    with transaction.atomic():
        changed = Job.objects.filter(
            id=job_id,
            status=Status.RUNNING,
            lease_expires_at__lt=now,
            attempts__lt=settings.SNAPREAD_MAX_ATTEMPTS,
        ).update(
            status=Status.QUEUED, stage="", lease_expires_at=None, worker_host="", enqueued_at=now
        )
        if changed:
            _after_commit_publish(Job.objects.get(id=job_id))
            transaction.on_commit(lambda: _send(job_id))
    return bool(changed)


def job_give_up(job_id: uuid.UUID | str) -> bool:
    """Fail a running job whose lease ran out on its last allowed attempt."""
    now = timezone.now()
    with transaction.atomic():
        changed = Job.objects.filter(
            id=job_id,
            status=Status.RUNNING,
            lease_expires_at__lt=now,
            attempts__gte=settings.SNAPREAD_MAX_ATTEMPTS,
        ).update(
            status=Status.FAILED,
            stage="",
            lease_expires_at=None,
            finished_at=now,
            error_code="too_many_attempts",
            error_message=(
                f"The worker stopped answering on each of {settings.SNAPREAD_MAX_ATTEMPTS} "
                "attempts (the limit); the image may crash or stall the reader."
            ),
        )
        if changed:
            _after_commit_publish(Job.objects.get(id=job_id))
    return bool(changed)


def sweep(batch: int = 500) -> SweepReport:
    """Re-send jobs queued too long; take back or fail jobs whose lease ran out."""
    now = timezone.now()
    report = SweepReport()
    queued_before = now - timedelta(seconds=settings.SNAPREAD_RESEND_AFTER_SECONDS)
    stale = Job.objects.filter(status=Status.QUEUED, enqueued_at__lt=queued_before)
    stale_ids = list(stale.order_by("enqueued_at").values_list("id", flat=True)[:batch])
    if stale_ids and (waiting := _messages_waiting()) is not None:
        # A job queued a long time is usually just waiting its turn behind a backlog, its
        # message still in the queue; re-sending every such job on every sweep would add
        # a duplicate per job per sweep for as long as the backlog lasts. Only as many
        # messages as are surely missing go out again, oldest jobs first; once the queue
        # drains below the number of queued jobs, the rest follow on later sweeps.
        missing = Job.objects.filter(status=Status.QUEUED).count() - waiting
        stale_ids = stale_ids[: max(0, missing)]
    for job_id in stale_ids:
        report.resent += job_resend(job_id, queued_before)
    expired = Job.objects.filter(status=Status.RUNNING, lease_expires_at__lt=now)
    for job_id in expired.values_list("id", flat=True)[:batch]:
        if job_requeue(job_id):
            report.requeued += 1
        elif job_give_up(job_id):
            report.failed += 1
    return report


# -- internals ------------------------------------------------------------------------


def _lease() -> timedelta:
    return timedelta(seconds=settings.SNAPREAD_LEASE_SECONDS)


def _claimed(claim: Claim) -> QuerySet[Job]:
    """The job while this attempt still holds it."""
    return Job.objects.filter(id=claim.job_id, status=Status.RUNNING, attempts=claim.attempt)


def _running_update(claim: Claim, *, durable: bool = True, **values: Any) -> bool:
    return _update_returning(_claimed(claim), durable=durable, **values) is not None


# In a statement's condition: SET LOCAL synchronous_commit TO OFF for its transaction,
# from inside the one statement (true for every row, so it filters nothing).
_ASYNC_COMMIT = RawSQL(
    "set_config('synchronous_commit', 'off', true) = 'off'", (), output_field=BooleanField()
)


def _update_returning(
    jobs: QuerySet[Job], *, durable: bool = True, publish: bool = True, **values: Any
) -> Job | None:
    """``jobs.update(**values)`` as one ``UPDATE ... RETURNING`` statement, published after
    commit (unless ``publish`` is off: the caller publishes): the updated job, or None
    when no row matched.

    A worker makes five such updates per job (the claim, then each stage); as one
    statement each is one round trip to PostgreSQL instead of four (begin, update,
    read back, commit), and the row read back is the one the update wrote.

    ``durable=False`` (progress: see the module's docstring) commits it without waiting
    for its WAL to reach the disk, which is most of a one-row update's time when the disk
    is busy; the setting is the statement's own and ends with it. Inside a caller's
    transaction it is ignored: the caller's commit decides.
    """
    if jobs.query.is_sliced:
        raise TypeError("a sliced queryset cannot be updated")
    using = router.db_for_write(Job)
    if not durable and connections[using].get_autocommit():
        jobs = jobs.filter(_ASYNC_COMMIT)
    query = jobs.query.chain(UpdateQuery)
    query.add_update_values(values)
    try:
        sql, params = query.get_compiler(using).as_sql()
    except EmptyResultSet:  # a filter no row can match (id__in=[])
        return None
    quote = connections[using].ops.quote_name
    columns = ", ".join(quote(f.column) for f in Job._meta.concrete_fields)
    # One statement needs no transaction of its own: in autocommit it is one, committed
    # before the row comes back (an error after it leaves the update made, as a lost
    # worker would: the lease runs out and the sweeper takes the job back); inside a
    # caller's transaction it is part of that, and the publish waits for its commit.
    job = next(iter(Job.objects.raw(f"{sql} RETURNING {columns}", params, using=using)), None)
    if job is not None and publish:
        _after_commit_publish(job)
    return job


def _reading_values(reading: Reading, status: Status) -> dict[str, Any]:
    """A finished attempt's columns: the outcome, what the chain said, the lease gone."""
    return {
        "status": status,
        "stage": "",
        "classification_label": reading.label[:100],
        "classification_score": reading.score,
        "classification_relevant": reading.relevant,
        "pack_name": reading.pack_name[:100],
        "pack_version": reading.pack_version[:100],
        "timings_ms": {k: round(float(v), 2) for k, v in reading.timings_ms.items()},
        "lease_expires_at": None,
        "finished_at": timezone.now(),
    }


def _after_commit_publish(job: Job, regions: list[Region] | None = None) -> None:
    # The payload is taken now, from the row this transaction (or statement) wrote, so
    # subscribers see every state in the order it was committed rather than whatever the
    # row holds when they are told.
    payload = job_payload(job, regions)
    transaction.on_commit(lambda: _publish(str(job.id), payload))


def _publish(job_id: str, payload: dict | None) -> None:
    message = {"type": "job.update", "job": payload} if payload else {"type": "job.deleted"}
    # A running job's progress (its claim, each stage, a lease renewal) goes out without
    # the worker waiting for it; every other state is waited for. Either way a job's
    # updates reach its watchers in the order they were made (detection.live).
    progress = payload is not None and payload["status"] == Status.RUNNING
    try:
        live.group_send(job_group(job_id), message, wait=not progress)
    except Exception:
        # Live updates are a convenience; the row is the truth and clients can poll.
        log.exception("could not publish job %s", job_id)


def _send(job_id: uuid.UUID | str) -> None:
    from project.celery import app

    try:
        app.send_task(READ_JOB_TASK, args=[str(job_id)])
    except Exception:
        # The job stays queued; the sweeper sends it again.
        log.exception("could not enqueue job %s; the sweeper will re-send it", job_id)


def _messages_waiting() -> int | None:
    """Messages in the reading queue now (not those workers hold); None when unknown."""
    from project.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=1)
            _, count, _ = conn.default_channel.queue_declare(queue=READ_QUEUE)
            return int(count)
    except Exception:
        # Unknown: re-send every stale job, as if nothing waited.
        log.warning("could not count the messages in queue %s", READ_QUEUE, exc_info=True)
        return None


def _delete_files(names: list[str]) -> None:
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:
            log.exception("could not remove %s", name)


def _remove_files(job_id: str) -> None:
    directory = f"jobs/{job_id}"
    try:
        if not default_storage.exists(directory):
            return
        _, files = default_storage.listdir(directory)
        for name in files:
            default_storage.delete(f"{directory}/{name}")
        path = getattr(default_storage, "path", None)
        if path is not None:
            os.rmdir(path(directory))
    except OSError:
        log.exception("could not remove the files of job %s", job_id)
