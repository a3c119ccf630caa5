"""The browser page: upload, watch the stages live, read the answer, see past jobs."""

from __future__ import annotations

import io
import uuid

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET
from PIL import Image

from detection import selectors
from detection.models import Job

# The longer side of a history thumbnail: shown at 56 CSS pixels, sharp up to 3x screens.
THUMBNAIL_SIDE = 168


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


@require_GET
def job_thumbnail(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    """A small JPEG of the job's input, for its owner only.

    The same rule as the API's file views: anyone else's job, or no login, is a 404
    (not a redirect to the login page, which an <img> could not show anyway). The
    thumbnail is kept beside the job's other files, so deleting the job removes it.
    """
    if not request.user.is_authenticated:
        raise Http404
    try:
        job = selectors.job_of(request.user, job_id)
    except Job.DoesNotExist:
        raise Http404 from None
    name = f"{job.media_dir}/thumbnail.jpg"
    if default_storage.exists(name):
        with default_storage.open(name, "rb") as stored:
            data = stored.read()
    else:
        data = _thumbnail(job)
        default_storage.save(name, ContentFile(data))
        if not Job.objects.filter(id=job.id).exists():
            # Deleted while we drew it: the job's folder must not come back.
            default_storage.delete(name)
    response = HttpResponse(data, content_type="image/jpeg")
    response["Cache-Control"] = "private, max-age=86400"
    return response


def _thumbnail(job: Job) -> bytes:
    if not job.image or not default_storage.exists(job.image.name):
        raise Http404
    with default_storage.open(job.image.name, "rb") as stored, Image.open(stored) as image:
        # JPEG decodes at 1/2..1/8 scale when asked first: a 40 MP photo costs little.
        image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        if image.mode != "RGB":
            background = Image.new("RGB", image.size, (255, 255, 255))
            background.paste(image.convert("RGBA"), mask=image.convert("RGBA"))
            image = background
        out = io.BytesIO()
        image.save(out, "JPEG", quality=82)
    return out.getvalue()
