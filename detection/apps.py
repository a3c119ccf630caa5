from __future__ import annotations

from django.apps import AppConfig


class DetectionConfig(AppConfig):
    name = "detection"
    verbose_name = "Detection jobs"
    default_auto_field = "django.db.models.BigAutoField"
