"""The admin: jobs and their regions, read-only, with thumbnails and a re-run action.

State changes go through detection.jobs, never through a form. Stored images have no
public URL: the admin serves them through its own views, to staff allowed to view jobs.
"""

from __future__ import annotations

import io
import uuid

from django.contrib import admin, messages
from django.core.files.storage import default_storage
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import path, reverse
from django.utils.html import format_html
from PIL import Image

from detection import jobs
from detection.models import Job, Region

THUMBNAIL_PX = 160


def _admin_url(name: str, *args: object) -> str:
    return reverse(f"admin:detection_job_{name}", args=args)


def _thumbnail(url: str, alt: str) -> str:
    return format_html('<img src="{}" alt="{}" style="max-height:80px" loading="lazy">', url, alt)


def _crop_preview(region: Region) -> str:
    # The bytes are not loaded for the preview (the queryset defers them): the image's
    # view answers 404 for a region stored without a crop.
    return _thumbnail(_admin_url("region_crop", region.job_id, region.index), region.text)


class RegionInline(admin.TabularInline):
    model = Region
    extra = 0
    can_delete = False
    fields = (
        "index",
        "crop_preview",
        "text",
        "confidence",
        "label",
        "score",
        "x0",
        "y0",
        "x1",
        "y1",
    )
    readonly_fields = fields

    def get_queryset(self, request):  # type: ignore[no-untyped-def]
        return super().get_queryset(request).defer("crop_png")

    @admin.display(description="crop")
    def crop_preview(self, region: Region) -> str:
        return _crop_preview(region)

    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "id", "preview", "owner", "status", "stage", "pack_version", "attempts", "created_at",
        "finished_at",
    )  # fmt: skip
    list_filter = (
        "status",
        "stage",
        "pack_name",
        "pack_version",
        ("created_at", admin.DateFieldListFilter),
    )
    search_fields = ("id", "owner__username", "owner__email", "image_sha256", "idempotency_key")
    date_hierarchy = "created_at"
    list_select_related = ("owner",)
    inlines = [RegionInline]
    actions = ["rerun"]

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        return ["preview", *(f.name for f in Job._meta.fields)]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        # A job is deleted by its owner through the API (detection.jobs.job_delete, which
        # also removes its files and tells its watchers); the admin's cascade would not.
        return False

    def has_rerun_permission(self, request: HttpRequest) -> bool:
        # The form stays read-only; a re-run is a state change through detection.jobs,
        # allowed to whoever may change jobs.
        return request.user.has_perm("detection.change_job")

    @admin.display(description="image")
    def preview(self, job: Job) -> str:
        return _thumbnail(_admin_url("thumbnail", job.id), f"job {job.id}")

    @admin.action(description="Re-run the selected finished jobs", permissions=["rerun"])
    def rerun(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        ids = list(queryset.values_list("id", flat=True))
        requeued = sum(jobs.job_rerun(job_id) for job_id in ids)
        if requeued:
            self.message_user(request, f"{requeued} job(s) queued again.", messages.SUCCESS)
        if skipped := len(ids) - requeued:
            self.message_user(
                request, f"{skipped} job(s) skipped: only finished jobs re-run.", messages.WARNING
            )

    # -- files ------------------------------------------------------------------------

    def get_urls(self):  # type: ignore[no-untyped-def]
        view = self.admin_site.admin_view
        return [
            path(
                "<uuid:job_id>/thumbnail/",
                view(self.thumbnail_view),
                name="detection_job_thumbnail",
            ),
            path(
                "<uuid:job_id>/regions/<int:index>/crop/",
                view(self.region_crop_view),
                name="detection_job_region_crop",
            ),
            *super().get_urls(),
        ]

    def _viewable_job(self, request: HttpRequest, job_id: uuid.UUID) -> Job:
        job = Job.objects.filter(id=job_id).first()
        if job is None or not self.has_view_permission(request, job):
            raise Http404
        return job

    def thumbnail_view(self, request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
        job = self._viewable_job(request, job_id)
        name = job.annotated_image.name or job.image.name
        if not name or not default_storage.exists(name):
            raise Http404
        with default_storage.open(name, "rb") as stored:
            image = Image.open(stored)
            image.draft("RGB", (THUMBNAIL_PX * 2, THUMBNAIL_PX * 2))
            image = image.convert("RGB")
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=80)
        response = HttpResponse(out.getvalue(), content_type="image/jpeg")
        response["Cache-Control"] = "private, max-age=60"
        return response

    def region_crop_view(self, request: HttpRequest, job_id: uuid.UUID, index: int) -> HttpResponse:
        self._viewable_job(request, job_id)
        region = Region.objects.filter(job_id=job_id, index=index).first()
        if region is None or not region.crop_png:
            raise Http404
        response = HttpResponse(bytes(region.crop_png), content_type="image/png")
        response["Cache-Control"] = "private, max-age=60"
        return response


@admin.register(Region)
class RegionAdmin(admin.ModelAdmin):
    list_display = ("job", "index", "crop_preview", "label", "text", "confidence", "score")
    search_fields = ("job__id", "text")
    list_select_related = ("job",)

    def get_queryset(self, request):  # type: ignore[no-untyped-def]
        return super().get_queryset(request).defer("crop_png")

    @admin.display(description="crop")
    def crop_preview(self, region: Region) -> str:
        return _crop_preview(region)

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        return ["crop_preview", *(f.name for f in Region._meta.fields if f.name != "crop_png")]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False  # regions go with their job
