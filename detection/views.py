"""The browser page: upload, watch the stages live, read the answer."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie


@login_required
@ensure_csrf_cookie
def index(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "detection/index.html",
        {
            "max_upload_mb": settings.SNAPREAD_MAX_UPLOAD_BYTES // 1_048_576,
            "max_megapixels": settings.SNAPREAD_MAX_PIXELS // 1_000_000,
        },
    )
