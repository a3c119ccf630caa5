from __future__ import annotations

from django.contrib import admin

from detection.models import Job, Region


class RegionInline(admin.TabularInline):
    model = Region
    extra = 0
    can_delete = False
    fields = ("index", "label", "score", "text", "confidence", "x0", "y0", "x1", "y1", "crop")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    """Read-only: state changes go through detection.jobs, never through a form."""

    list_display = ("id", "owner", "status", "stage", "attempts", "created_at", "finished_at")
    list_filter = ("status", "stage", "pack_name")
    search_fields = ("id", "owner__username", "image_sha256", "idempotency_key")
    date_hierarchy = "created_at"
    list_select_related = ("owner",)
    inlines = [RegionInline]

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        return [f.name for f in Job._meta.fields]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


@admin.register(Region)
class RegionAdmin(admin.ModelAdmin):
    list_display = ("job", "index", "label", "text", "confidence", "score")
    search_fields = ("job__id", "text")
    list_select_related = ("job",)

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        return [f.name for f in Region._meta.fields]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False
