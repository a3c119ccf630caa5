"""The admin site: Django's, with a link to Flower on its index page.

Installed in place of django.contrib.admin (settings.INSTALLED_APPS), the documented way
to give the default site a class of one's own.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.apps import AdminConfig as DjangoAdminConfig
from django.http import HttpRequest


class SnapreadAdminSite(admin.AdminSite):
    site_header = "Snapread administration"
    site_title = "Snapread admin"
    index_template = "admin/detection/index.html"

    def each_context(self, request: HttpRequest) -> dict[str, Any]:
        context = super().each_context(request)
        context["flower_url"] = settings.FLOWER_URL
        return context


class AdminConfig(DjangoAdminConfig):
    default_site = "detection.admin_site.SnapreadAdminSite"
