"""Reading jobs: who may see what, and the one public shape of a job."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db.models import Prefetch, QuerySet
from django.db.models.functions import Length
from django.urls import reverse

from detection.models import Job, Region, Status


def job_group(job_id: uuid.UUID | str) -> str:
    """The channel-layer group that hears every change of one job."""
    return f"job-{job_id}"


def regions_without_crops() -> QuerySet[Region]:
    """Regions as a job's reads show them: the crops' bytes stay in the database (each
    has its own URL), only their length comes along."""
    return Region.objects.defer("crop_png").annotate(crop_bytes=Length("crop_png"))


def _has_crop(region: Region) -> bool:
    length = getattr(region, "crop_bytes", None)  # read without the bytes
    return bool(region.crop_png) if length is None else length > 0


def jobs_of(owner: Any, status: str | None = None) -> QuerySet[Job]:
    jobs = Job.objects.filter(owner=owner).prefetch_related(
        Prefetch("regions", queryset=regions_without_crops())
    )
    if status:
        jobs = jobs.filter(status=status)
    return jobs.order_by("-created_at")


def job_of(owner: Any, job_id: uuid.UUID | str) -> Job:
    """The owner's job; Job.DoesNotExist for anyone else's, so it reads as a 404.

    Its regions are not fetched with it: only a succeeded job has any, and job_payload
    reads them (one query) only then; the file views need none.
    """
    return Job.objects.get(id=job_id, owner=owner)


def job_by_idempotency_key(owner: Any, key: str) -> Job | None:
    return Job.objects.filter(owner=owner, idempotency_key=key).first() if key else None


def region_of(owner: Any, job_id: uuid.UUID | str, index: int) -> Region:
    return Region.objects.select_related("job").get(job_id=job_id, job__owner=owner, index=index)


def _regions_of(job: Job) -> Sequence[Region]:
    if "regions" in getattr(job, "_prefetched_objects_cache", {}):
        return job.regions.all()  # fetched with the page of jobs (jobs_of)
    return regions_without_crops().filter(job=job)


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def job_payload(job: Job, regions: Sequence[Region] | None = None) -> dict[str, Any]:
    """The job as the API, the WebSocket and the page show it; ``regions``, when the
    caller has just written them, saves reading them back."""
    job_id = str(job.id)
    # Only a succeeded job has regions (they are written with that status and removed
    # with it on a re-run): no query for the others, which are most of the updates.
    if job.status != Status.SUCCEEDED:
        stored = []
    else:
        stored = sorted(_regions_of(job) if regions is None else regions, key=lambda r: r.index)
    regions = [
        {
            "index": r.index,
            "box": [r.x0, r.y0, r.x1, r.y1],
            "label": r.label,
            "score": r.score,
            "text": r.text,
            "confidence": r.confidence,
            "crop_url": reverse("region-crop", args=[job_id, r.index]) if _has_crop(r) else None,
        }
        for r in stored
    ]
    classification = None
    if job.classification_label:
        classification = {
            "label": job.classification_label,
            "score": job.classification_score,
            "relevant": job.classification_relevant,
        }
    return {
        "id": job_id,
        "status": job.status,
        "stage": job.stage or None,
        "classification": classification,
        "regions": regions,
        "image_url": reverse("job-image", args=[job_id]),
        "annotated_url": reverse("job-annotated", args=[job_id])
        if job.status == Status.SUCCEEDED
        else None,
        "width": job.image_width,
        "height": job.image_height,
        "sha256": job.image_sha256,
        "timings_ms": job.timings_ms or {},
        "error": {"code": job.error_code, "message": job.error_message}
        if job.status == Status.FAILED or job.error_code
        else None,
        "attempts": job.attempts,
        "pack": {"name": job.pack_name, "version": job.pack_version} if job.pack_name else None,
        "created_at": _time(job.created_at),
        "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at),
    }
