"""What the worker stores is bounded, and a database failure is not blamed on the image.

read_job runs in-process here with the FAKE chain (two regions per image)."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from detection import jobs
from detection.models import Job, Status
from workers import worker_chain
from workers.batching import Batcher
from workers.tasks import read_job

from .conftest import queued_job_without_message
from .fake_chain import FakeReadingChain

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fake_chain(monkeypatch) -> None:
    monkeypatch.setattr(worker_chain, "_batcher", Batcher(FakeReadingChain()))


def test_it_fails_a_reading_with_more_regions_than_the_store_takes(alice, settings) -> None:
    settings.SNAPREAD_MAX_REGIONS = 1
    job = queued_job_without_message(alice)

    assert read_job(str(job.id)) == "failed"
    job.refresh_from_db()
    assert (job.status, job.error_code) == (Status.FAILED, "too_many_regions")
    assert job.regions.count() == 0


def test_it_fails_a_reading_with_a_crop_over_the_pixel_limit(alice, settings) -> None:
    settings.SNAPREAD_MAX_CROP_PIXELS = 10
    job = queued_job_without_message(alice)

    read_job(str(job.id))

    assert Job.objects.get(id=job.id).error_code == "crop_too_large"


def test_it_fails_a_reading_whose_crops_are_over_the_byte_limit(alice, settings) -> None:
    settings.SNAPREAD_MAX_CROP_BYTES = 100  # the fake chain's two crops take more
    job = queued_job_without_message(alice)

    assert read_job(str(job.id)) == "failed"
    job.refresh_from_db()
    assert (job.status, job.error_code) == (Status.FAILED, "crops_too_large")
    assert job.regions.count() == 0


def test_a_database_error_mid_chain_leaves_the_job_to_the_sweeper(alice, monkeypatch) -> None:
    def database_gone(claim: jobs.Claim, stage: str) -> bool:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(jobs, "job_advance_stage", database_gone)
    job = queued_job_without_message(alice)

    assert read_job(str(job.id)) == "database_error"
    job.refresh_from_db()
    assert (job.status, job.error_code) == (Status.RUNNING, "")
