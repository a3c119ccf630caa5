"""Jobs and the regions a job found.

Only detection.jobs changes a job's status; everything else reads.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Status(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELED = "canceled"


class Stage(models.TextChoices):
    CLASSIFY = "classify"
    DETECT = "detect"
    CROP = "crop"
    OCR = "ocr"


TERMINAL = (Status.SUCCEEDED, Status.REJECTED, Status.FAILED, Status.CANCELED)
UNFINISHED = (Status.QUEUED, Status.RUNNING)


class Job(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    stage = models.CharField(max_length=16, choices=Stage.choices, blank=True)

    image = models.FileField(max_length=255)
    image_width = models.PositiveIntegerField()
    image_height = models.PositiveIntegerField()
    image_sha256 = models.CharField(max_length=64)
    annotated_image = models.FileField(max_length=255, blank=True)

    classification_label = models.CharField(max_length=100, blank=True)
    classification_score = models.FloatField(null=True, blank=True)
    classification_relevant = models.BooleanField(null=True, blank=True)

    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)

    attempts = models.PositiveSmallIntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    worker_host = models.CharField(max_length=255, blank=True)
    pack_name = models.CharField(max_length=100, blank=True)
    pack_version = models.CharField(max_length=100, blank=True)
    timings_ms = models.JSONField(default=dict, blank=True)

    idempotency_key = models.CharField(max_length=255, blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    # When the message was last sent; the sweeper re-sends jobs queued too long since.
    enqueued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="job_idempotency_key_unique_per_owner",
            ),
            models.CheckConstraint(
                condition=Q(status__in=[s.value for s in Status]), name="job_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(status=Status.RUNNING) | Q(stage=""),
                name="job_stage_only_while_running",
            ),
            models.CheckConstraint(
                condition=~Q(status=Status.FAILED) | ~Q(error_code=""),
                name="job_failed_has_error_code",
            ),
        ]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="job_owner_created"),
            models.Index(
                fields=["owner", "status", "-created_at"], name="job_owner_status_created"
            ),
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(status=Status.RUNNING),
                name="job_running_lease",
            ),
            models.Index(
                fields=["enqueued_at"], condition=Q(status=Status.QUEUED), name="job_queued_since"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def media_dir(self) -> str:
        return f"jobs/{self.id}"


class Region(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="regions")
    index = models.PositiveSmallIntegerField()
    x0 = models.FloatField()
    y0 = models.FloatField()
    x1 = models.FloatField()
    y1 = models.FloatField()
    label = models.CharField(max_length=100)
    score = models.FloatField()
    # The crop as PNG, kept in the row: a job's results are one transaction, and go
    # with the row (a re-run, a delete) without any file to clean up. A few kB each;
    # the job's reads leave the column out (detection.selectors).
    crop_png = models.BinaryField(blank=True, default=b"", editable=False)
    text = models.TextField(blank=True)
    confidence = models.FloatField()

    class Meta:
        ordering = ["job", "index"]
        constraints = [
            # One set of regions per job, however often the chain ran: a second writer
            # fails on this constraint instead of adding rows.
            models.UniqueConstraint(fields=["job", "index"], name="region_index_unique_in_job"),
        ]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.index} {self.text!r}"

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)
