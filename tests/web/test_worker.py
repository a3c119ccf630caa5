"""The worker side of the spine, with a real Celery worker running the FAKE chain."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from detection import jobs
from detection.models import Job, Region, Status
from project.celery import app
from workers.tasks import read_job

from .conftest import image_bytes, media_files, queued_job_without_message, upload, wait_for_job
from .fake_chain import EXPLODE, REJECT, SLOW

pytestmark = pytest.mark.django_db(transaction=True)


def submit(api, colour=(200, 200, 200)) -> str:
    response = api.post("/api/v1/jobs/", {"image": upload(image_bytes(colour))}, format="multipart")
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def test_it_reads_a_submitted_job_to_succeeded(spine_worker, alice_api) -> None:
    job = wait_for_job(submit(alice_api))

    assert job.status == Status.SUCCEEDED
    assert [r.text for r in job.regions.order_by("index")] == ["12", "345"]
    assert job.attempts == 1
    assert job.pack_name == "fake-spine-pack"


def test_it_serves_the_crops_and_annotated_image_to_the_owner(spine_worker, alice_api) -> None:
    job_id = submit(alice_api)
    wait_for_job(job_id)
    body = alice_api.get(f"/api/v1/jobs/{job_id}/").json()
    assert body["status"] == "succeeded", body

    for url in [body["annotated_url"], body["image_url"]] + [
        r["crop_url"] for r in body["regions"]
    ]:
        response = alice_api.get(url)
        assert response.status_code == 200
        assert response["Content-Type"].startswith("image/")


def test_it_rejects_an_image_the_classifier_finds_irrelevant(spine_worker, alice_api) -> None:
    job = wait_for_job(submit(alice_api, REJECT))

    assert job.status == Status.REJECTED
    assert job.classification_relevant is False
    assert not job.regions.exists()


def test_it_fails_with_a_code_when_the_chain_raises(spine_worker, alice_api) -> None:
    job = wait_for_job(submit(alice_api, EXPLODE))

    assert job.status == Status.FAILED
    assert job.error_code == "reader_error"
    assert "exploded" in job.error_message


def test_a_duplicate_delivery_after_success_changes_nothing(spine_worker, alice_api) -> None:
    job = wait_for_job(submit(alice_api))
    finished_at = job.finished_at

    app.send_task("workers.tasks.read_job", args=[str(job.id)])
    assert read_job.apply(args=[str(job.id)]).get() == "not queued"

    job.refresh_from_db()
    assert (job.status, job.attempts, job.finished_at) == (Status.SUCCEEDED, 1, finished_at)
    assert job.regions.count() == 2


def test_a_message_sent_twice_at_once_runs_the_chain_once(spine_worker, alice) -> None:
    job = queued_job_without_message(alice)

    app.send_task("workers.tasks.read_job", args=[str(job.id)])
    app.send_task("workers.tasks.read_job", args=[str(job.id)])
    job = wait_for_job(job.id)

    assert (job.status, job.attempts) == (Status.SUCCEEDED, 1)
    assert job.regions.count() == 2


def test_the_sweeper_recovers_a_job_whose_message_was_lost(spine_worker, alice) -> None:
    job = queued_job_without_message(alice, enqueued_at=timezone.now() - timedelta(hours=1))

    report = jobs.sweep()
    job = wait_for_job(job.id)

    assert report.resent == 1
    assert (job.status, job.attempts) == (Status.SUCCEEDED, 1)


def test_the_sweeper_takes_back_a_job_whose_lease_expired(spine_worker, alice) -> None:
    job = queued_job_without_message(alice)
    assert jobs.job_claim(job.id, "a-worker-that-died") is not None
    Job.objects.filter(id=job.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    report = jobs.sweep()
    job = wait_for_job(job.id)

    assert report.requeued == 1
    assert (job.status, job.attempts) == (Status.SUCCEEDED, 2)
    assert job.worker_host == spine_worker.name


def test_cancel_stops_a_running_job_at_its_next_stage(spine_worker, alice_api) -> None:
    job_id = submit(alice_api, SLOW)
    wait_for_job(job_id, statuses=[Status.RUNNING])

    assert alice_api.post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 200
    job = wait_for_job(job_id)

    assert job.status == Status.CANCELED
    assert not job.regions.exists()


def test_delete_removes_the_job_its_regions_and_every_file(spine_worker, alice_api) -> None:
    before = media_files()
    job = wait_for_job(submit(alice_api))
    assert alice_api.get(f"/api/v1/jobs/{job.id}/annotated/").status_code == 200
    assert len(media_files() - before) == 2  # input, annotated (drawn on request)
    assert Region.objects.filter(job=job).count() == 2  # each with its crop in its row

    response = alice_api.delete(f"/api/v1/jobs/{job.id}/")

    assert response.status_code == 204
    assert not Job.objects.filter(id=job.id).exists()
    assert media_files() == before
    assert not Region.objects.filter(job_id=job.id).exists()
