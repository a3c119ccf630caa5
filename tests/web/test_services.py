"""detection.jobs, the one module that changes a job's state, refuses what is illegal."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from detection import jobs
from detection.models import Job, Region, Status
from detection.selectors import job_payload
from detection.uploads import normalize_upload

from .conftest import image_bytes, queued_job_without_message

pytestmark = pytest.mark.django_db

READING = jobs.Reading(label="page", score=0.9, relevant=True, pack_name="p", pack_version="1")


def expire_lease(job: Job) -> None:
    Job.objects.filter(id=job.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


def test_it_claims_a_queued_job_only_once(alice) -> None:
    job = queued_job_without_message(alice)

    first = jobs.job_claim(job.id, "w1")
    second = jobs.job_claim(job.id, "w2")

    assert first is not None and first.attempt == 1
    assert second is None
    job.refresh_from_db()
    assert (job.status, job.worker_host, job.attempts) == (Status.RUNNING, "w1", 1)
    assert job.lease_expires_at > timezone.now()


def test_it_records_stages_and_renews_the_lease(alice) -> None:
    job = queued_job_without_message(alice)
    claim = jobs.job_claim(job.id, "w1")
    expire_lease(job)

    assert jobs.job_advance_stage(claim, "detect")

    job.refresh_from_db()
    assert job.stage == "detect"
    assert job.lease_expires_at > timezone.now()


@pytest.fixture
def published(monkeypatch) -> list[dict]:
    """Every job payload detection.jobs publishes, in order, instead of sending it."""
    payloads: list[dict] = []
    monkeypatch.setattr(jobs, "_publish", lambda job_id, payload: payloads.append(payload))
    return payloads


def test_a_claim_and_a_stage_are_one_statement_each_and_publish_the_row_they_wrote(
    alice, published, django_capture_on_commit_callbacks
) -> None:
    job = queued_job_without_message(alice)

    with (
        CaptureQueriesContext(connection) as queries,
        django_capture_on_commit_callbacks(execute=True),
    ):
        claim = jobs.job_claim(job.id, "w1")
        assert jobs.job_advance_stage(claim, "detect")

    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["UPDATE", "UPDATE"]
    assert [(p["status"], p["stage"]) for p in published] == [
        ("running", None),
        ("running", "detect"),
    ]
    assert claim is not None and claim.attempt == 1


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_each_update_commits_at_once_and_publishes_at_once(
    alice, monkeypatch
) -> None:
    # As the worker runs them: autocommit, no transaction around the statements.
    published: list[tuple[str, str | None]] = []

    def committed(job_id: str) -> tuple[str, str]:
        # On a thread of its own, so on a connection of its own: it sees only commits.
        try:
            return Job.objects.values_list("status", "stage").get(id=job_id)
        finally:
            connection.close()

    def publish(job_id: str, payload: dict) -> None:
        with ThreadPoolExecutor(1) as pool:
            seen = pool.submit(committed, job_id).result()
        assert seen == (payload["status"], payload["stage"] or "")
        published.append((payload["status"], payload["stage"]))

    monkeypatch.setattr(jobs, "_publish", publish)
    job = queued_job_without_message(alice)

    claim = jobs.job_claim(job.id, "w1")
    assert claim is not None and jobs.job_claim(job.id, "w2") is None
    assert jobs.job_advance_stage(claim, "ocr")
    assert jobs.job_fail(claim, "reader_error", "broken")
    assert not jobs.job_advance_stage(claim, "crop")

    assert published == [("running", None), ("running", "ocr"), ("failed", None)]
    job.refresh_from_db()
    assert (job.status, job.error_code, job.attempts, job.lease_expires_at) == (
        Status.FAILED, "reader_error", 1, None,
    )  # fmt: skip


ASYNC_COMMIT = "set_config('synchronous_commit', 'off', true)"


@pytest.mark.django_db(transaction=True)
def test_progress_commits_without_waiting_for_the_disk_and_the_rest_waits(alice) -> None:
    # As the worker runs them (autocommit): the stages and the lease are progress, each
    # statement's own transaction asynchronous; the claim and the outcome are durable, and
    # the setting never outlives its statement on the connection.
    def synchronous_commit() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            return cursor.fetchone()[0]

    before = synchronous_commit()
    assert before != "off"
    job = queued_job_without_message(alice)
    with CaptureQueriesContext(connection) as durable:
        claim = jobs.job_claim(job.id, "w1")
        assert claim is not None
    with CaptureQueriesContext(connection) as progress:
        assert jobs.job_advance_stage(claim, "detect")
        assert jobs.job_renew_lease(claim)
    assert len(progress.captured_queries) == 2
    assert all(ASYNC_COMMIT in q["sql"] for q in progress.captured_queries)
    assert synchronous_commit() == before

    with CaptureQueriesContext(connection) as outcome:
        assert jobs.job_fail(claim, "reader_error", "broken")
    queries = durable.captured_queries + outcome.captured_queries
    assert queries and not any(ASYNC_COMMIT in q["sql"] for q in queries)
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Status.FAILED, 1)


def test_inside_a_callers_transaction_progress_commits_as_the_caller_does(alice) -> None:
    # pytest-django's transaction around the test stands for the caller's.
    job = queued_job_without_message(alice)
    claim = jobs.job_claim(job.id, "w1")
    assert claim is not None
    with CaptureQueriesContext(connection) as queries:
        assert jobs.job_advance_stage(claim, "crop") and jobs.job_renew_lease(claim)
    assert len(queries.captured_queries) == 2
    assert not any(ASYNC_COMMIT in q["sql"] for q in queries.captured_queries)


def test_the_finished_job_is_published_with_the_regions_just_written(
    alice, published, django_capture_on_commit_callbacks
) -> None:
    job = queued_job_without_message(alice)
    claim = jobs.job_claim(job.id, "w1")
    region = jobs.RegionReading(
        box=(1.0, 2.0, 30.0, 20.0), label="number", score=0.95, text="3.14", confidence=97.0,
        crop_png=b"\x89PNG",
    )  # fmt: skip
    reading = jobs.Reading(
        label="page", score=0.9, relevant=True, pack_name="p", pack_version="1",
        regions=[region, region],
    )  # fmt: skip

    with django_capture_on_commit_callbacks(execute=True):
        assert jobs.job_complete(claim, reading)

    [finished] = published
    stored = Job.objects.get(id=job.id)
    assert finished == job_payload(stored)  # what a reader of the row sees
    assert [r["text"] for r in finished["regions"]] == ["3.14", "3.14"]


def _reading_with_crops(count: int) -> jobs.Reading:
    regions = [
        jobs.RegionReading(
            box=(1.0, 2.0, 30.0, 20.0), label="number", score=0.95, text="3.14",
            confidence=97.0, crop_png=b"\x89PNG crop %d" % index,
        )
        for index in range(count)
    ]  # fmt: skip
    return jobs.Reading(
        label="page", score=0.9, relevant=True, pack_name="p", pack_version="1", regions=regions
    )


def _files_of(job_id: object) -> list[str]:
    folder = f"jobs/{job_id}"
    if not default_storage.exists(folder):
        return []
    return sorted(default_storage.listdir(folder)[1])


def test_the_completion_is_one_fenced_update_and_one_insert(alice) -> None:
    job = queued_job_without_message(alice)
    claim = jobs.job_claim(job.id, "w1")
    with CaptureQueriesContext(connection) as queries:
        assert jobs.job_complete(claim, _reading_with_crops(3))
    statements = [q["sql"].split()[0] for q in queries.captured_queries]
    # (SAVEPOINT and RELEASE: pytest-django's transaction stands for the commit.)
    assert [s for s in statements if s not in ("SAVEPOINT", "RELEASE")] == ["UPDATE", "INSERT"]
    # The crops are in the regions' rows, in order; no file is written beside the photo.
    stored = [bytes(r.crop_png) for r in Region.objects.filter(job=job).order_by("index")]
    assert stored == [b"\x89PNG crop 0", b"\x89PNG crop 1", b"\x89PNG crop 2"]
    assert _files_of(job.id) == [job.image.name.rsplit("/", 1)[1]]


def test_a_completion_that_is_not_ours_leaves_nothing(
    alice, django_capture_on_commit_callbacks
) -> None:
    canceled = queued_job_without_message(alice)
    claim = jobs.job_claim(canceled.id, "w1")
    jobs.job_cancel(canceled.id, alice)
    assert not jobs.job_complete(claim, _reading_with_crops(2))
    assert not Region.objects.filter(job=canceled).exists()
    assert _files_of(canceled.id) == [canceled.image.name.rsplit("/", 1)[1]]  # its photo stays

    deleted = queued_job_without_message(alice)
    claim = jobs.job_claim(deleted.id, "w1")
    with django_capture_on_commit_callbacks(execute=True):
        jobs.job_delete(deleted.id, alice)
    assert not jobs.job_complete(claim, _reading_with_crops(2))
    assert not default_storage.exists(f"jobs/{deleted.id}")  # no folder comes back


def test_a_rejection_is_one_fenced_update(alice) -> None:
    job = queued_job_without_message(alice)
    claim = jobs.job_claim(job.id, "w1")
    with CaptureQueriesContext(connection) as queries:
        assert jobs.job_reject(claim, READING)
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["UPDATE"]
    job.refresh_from_db()
    assert (job.status, job.classification_label, job.lease_expires_at) == (
        Status.REJECTED, "page", None,
    )  # fmt: skip
    assert not jobs.job_reject(claim, READING)


def test_it_refuses_an_unknown_stage(alice) -> None:
    claim = jobs.job_claim(queued_job_without_message(alice).id, "w1")

    with pytest.raises(ValueError):
        jobs.job_advance_stage(claim, "dream")


def test_it_refuses_to_complete_a_canceled_job(alice) -> None:
    job = queued_job_without_message(alice)
    claim = jobs.job_claim(job.id, "w1")
    jobs.job_cancel(job.id, alice)

    assert not jobs.job_advance_stage(claim, "detect")
    assert not jobs.job_complete(claim, READING)
    assert not jobs.job_fail(claim, "x", "y")
    assert Job.objects.get(id=job.id).status == Status.CANCELED


def test_a_stale_claim_writes_nothing_after_the_job_was_taken_back(alice) -> None:
    job = queued_job_without_message(alice)
    stale = jobs.job_claim(job.id, "slow-worker")
    expire_lease(job)
    assert jobs.job_requeue(job.id)
    fresh = jobs.job_claim(job.id, "other-worker")

    assert not jobs.job_complete(stale, READING)
    assert jobs.job_complete(fresh, READING)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.worker_host) == (Status.SUCCEEDED, 2, "other-worker")


def test_it_refuses_to_cancel_a_finished_job(alice) -> None:
    job = queued_job_without_message(alice)
    jobs.job_complete(jobs.job_claim(job.id, "w"), READING)

    with pytest.raises(jobs.NotCancelable):
        jobs.job_cancel(job.id, alice)


def test_it_does_not_requeue_a_running_job_whose_lease_holds(alice) -> None:
    job = queued_job_without_message(alice)
    jobs.job_claim(job.id, "w")

    assert not jobs.job_requeue(job.id)
    assert jobs.sweep().requeued == 0


def test_the_sweeper_gives_up_after_the_last_attempt(alice, settings) -> None:
    settings.SNAPREAD_MAX_ATTEMPTS = 2
    job = queued_job_without_message(alice)
    for _ in range(2):
        jobs.job_claim(job.id, "dies")
        expire_lease(job)
        report = jobs.sweep()

    job.refresh_from_db()
    assert (report.requeued, report.failed) == (0, 1)
    assert (job.status, job.error_code) == (Status.FAILED, "too_many_attempts")


def test_the_sweeper_resends_only_jobs_queued_too_long(alice, settings, monkeypatch) -> None:
    monkeypatch.setattr(jobs, "_messages_waiting", lambda: 0)
    settings.SNAPREAD_RESEND_AFTER_SECONDS = 60
    old = queued_job_without_message(alice, enqueued_at=timezone.now() - timedelta(minutes=5))
    queued_job_without_message(alice)

    assert jobs.sweep().resent == 1
    old.refresh_from_db()
    assert old.enqueued_at > timezone.now() - timedelta(minutes=1)
    assert jobs.sweep().resent == 0


def test_the_database_allows_one_set_of_regions_per_job(alice) -> None:
    job = queued_job_without_message(alice)
    box = {"x0": 0, "y0": 0, "x1": 1, "y1": 1, "label": "n", "score": 1, "confidence": 1}
    Region.objects.create(job=job, index=0, **box)

    with pytest.raises(IntegrityError), transaction.atomic():
        Region.objects.create(job=job, index=0, **box)


def test_the_database_refuses_a_failed_job_without_an_error_code(alice) -> None:
    job = queued_job_without_message(alice)

    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.filter(id=job.id).update(status=Status.FAILED)


def test_the_sweeper_does_not_resend_while_every_queued_job_has_a_message_waiting(
    alice, settings, monkeypatch
) -> None:
    monkeypatch.setattr(jobs, "_messages_waiting", lambda: 2)
    for _ in range(2):
        queued_job_without_message(alice, enqueued_at=timezone.now() - timedelta(minutes=5))

    assert jobs.sweep().resent == 0


def test_the_sweeper_resends_as_many_jobs_as_messages_are_missing(
    alice, settings, monkeypatch
) -> None:
    monkeypatch.setattr(jobs, "_messages_waiting", lambda: 1)
    old = timezone.now() - timedelta(minutes=5)
    oldest = queued_job_without_message(alice, enqueued_at=old - timedelta(minutes=1))
    queued_job_without_message(alice, enqueued_at=old)
    queued_job_without_message(alice, enqueued_at=old)

    assert jobs.sweep().resent == 2
    oldest.refresh_from_db()
    assert oldest.enqueued_at > old


def test_a_submit_is_the_cap_s_one_statement_and_the_insert(alice, monkeypatch) -> None:
    monkeypatch.setattr(jobs, "_send", lambda job_id: None)
    image = normalize_upload(io.BytesIO(image_bytes()))
    with CaptureQueriesContext(connection) as queries:
        job, created = jobs.job_submit(alice, image)
    statements = [q["sql"] for q in queries.captured_queries]
    statements = [s for s in statements if s.split()[0] not in ("SAVEPOINT", "RELEASE")]
    # The owner's lock and the count of unfinished jobs in one round trip, then the row.
    assert len(statements) == 2, statements
    assert statements[0].startswith("SELECT snapread_unfinished_after_lock(")
    assert statements[1].startswith('INSERT INTO "detection_job"')
    assert created and Job.objects.get(id=job.id).status == Status.QUEUED
