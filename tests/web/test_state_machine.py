"""Property: no sequence of events drives a job into an illegal state."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detection import jobs
from detection.models import TERMINAL, Job, Status

from .conftest import queued_job_without_message

pytestmark = pytest.mark.django_db

EVENTS = [
    "claim", "stage", "complete", "reject", "fail", "cancel", "expire", "sweep", "stale",
    "stale_stage", "stale_fail", "resend",
]  # fmt: skip
READING = jobs.Reading(
    label="page", score=0.9, relevant=True, pack_name="p", pack_version="1",
    regions=[jobs.RegionReading((0, 0, 1, 1), "n", 0.9, "7", 90.0, b"png")],
)  # fmt: skip


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=st.lists(st.sampled_from(EVENTS), max_size=12))
def test_no_sequence_of_events_reaches_an_illegal_state(alice, events: list[str]) -> None:
    job = queued_job_without_message(alice)
    claims: list[jobs.Claim] = []
    finished: tuple[str, int] | None = None
    for event in events:
        if event == "claim" and (claim := jobs.job_claim(job.id, "w")):
            claims.append(claim)
        elif event == "stage" and claims:
            jobs.job_advance_stage(claims[-1], "detect")
        elif event == "complete" and claims:
            jobs.job_complete(claims[-1], READING)
        elif event == "reject" and claims:
            jobs.job_reject(claims[-1], READING)
        elif event == "fail" and claims:
            jobs.job_fail(claims[-1], "reader_error", "boom")
        elif event == "cancel":
            with contextlib.suppress(jobs.NotCancelable):
                jobs.job_cancel(job.id, alice)
        elif event == "expire":
            running = Job.objects.filter(id=job.id, status=Status.RUNNING)
            running.update(lease_expires_at=timezone.now() - timedelta(1))
        elif event == "sweep":
            jobs.sweep()
        elif event == "stale" and claims:
            jobs.job_complete(claims[0], READING)
        elif event == "stale_stage" and claims:
            jobs.job_advance_stage(claims[0], "ocr")
        elif event == "stale_fail" and claims:
            jobs.job_fail(claims[0], "reader_error", "late")
        elif event == "resend":
            jobs.job_resend(job.id, timezone.now() + timedelta(1))

        job.refresh_from_db()
        regions = job.regions.count()
        assert job.status in Status.values
        assert (job.stage != "") <= (job.status == Status.RUNNING)
        assert regions == (len(READING.regions) if job.status == Status.SUCCEEDED else 0)
        assert job.attempts == len(claims) <= django_settings.SNAPREAD_MAX_ATTEMPTS
        assert (job.lease_expires_at is not None) == (job.status == Status.RUNNING)
        assert (job.finished_at is not None) == (job.status in TERMINAL)
        assert (job.status == Status.FAILED) <= (job.error_code != "")
        if finished is not None:
            assert (job.status, regions) == finished, "a terminal job changed"
        elif job.status in TERMINAL:
            finished = (job.status, regions)
