"""REST views: fetch input, call one service or selector, shape the answer."""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
import uuid

from django.conf import settings
from django.core.files.storage import default_storage
from django.db.models.fields.files import FieldFile
from django.http import FileResponse, HttpResponse
from django.utils.http import parse_etags
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from detection import jobs, selectors
from detection.api import schema
from detection.api.pagination import JobPagination
from detection.api.serializers import JobInput, JobListFilter, JobOutput
from detection.api.throttles import SubmitThrottle
from detection.logging import bind_job
from detection.models import Job, Status
from detection.uploads import UploadRefused, normalize_upload

log = logging.getLogger(__name__)

# Multipart framing around the file; a body above the byte limit plus this is refused
# before it is parsed.
MULTIPART_SLACK = 64 * 1024
IMAGE = {(200, "image/*"): OpenApiTypes.BINARY, **schema.errors(401, 404)}
# How long a client should wait before asking again about a job that is not finished: a
# running job moves a stage in about a second; a queued one waits for a worker.
RETRY_AFTER_S = {Status.QUEUED: 2, Status.RUNNING: 1}


def job_etag(payload: dict) -> str:
    """A strong ETag of the job's JSON: any change of the job (status, stage, attempts,
    results) changes it, and equal JSON always gives the same one."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return '"' + hashlib.sha256(canonical.encode()).hexdigest()[:32] + '"'


def _matches(if_none_match: str, etag: str) -> bool:
    # If-None-Match compares weakly (RFC 9110, 13.1.2): W/"x" matches "x".
    tags = parse_etags(if_none_match)
    return "*" in tags or etag in {tag.removeprefix("W/") for tag in tags}


def job_headers(payload: dict) -> dict[str, str]:
    headers = {"ETag": job_etag(payload), "Cache-Control": "private, no-cache"}
    if payload["status"] in RETRY_AFTER_S:
        headers["Retry-After"] = str(RETRY_AFTER_S[payload["status"]])
    return headers


class JobListCreate(GenericAPIView):
    pagination_class = JobPagination
    serializer_class = JobOutput

    def get_throttles(self):  # type: ignore[override]
        return [SubmitThrottle()] if self.request.method == "POST" else []

    @extend_schema(
        parameters=[JobListFilter],
        responses={200: JobOutput(many=True), **schema.errors(400, 401, 404)},
        examples=[
            schema.job_example("A succeeded job", schema.SUCCEEDED_JOB),
            schema.job_example("A running job", schema.RUNNING_JOB),
        ],
        tags=["jobs"],
        summary="List your jobs, newest first",
    )
    def get(self, request: Request) -> Response:
        # A plain dict, not the QueryDict: DRF's form-style reading would take `?status=`
        # as "no filter", which the schema (an enum) says is invalid.
        query = JobListFilter(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        filters = query.validated_data
        jobs_list = selectors.jobs_of(request.user, filters.get("status"))
        if "created_after" in filters:
            jobs_list = jobs_list.filter(created_at__gte=filters["created_after"])
        if "created_before" in filters:
            jobs_list = jobs_list.filter(created_at__lt=filters["created_before"])
        page = self.paginate_queryset(jobs_list)
        return self.get_paginated_response(JobOutput(page, many=True).data)

    @extend_schema(
        request={"multipart/form-data": JobInput},
        parameters=[schema.IDEMPOTENCY_KEY, schema.RETRY_AFTER],
        responses={
            201: OpenApiResponse(JobOutput, description="The job, queued."),
            200: OpenApiResponse(
                JobOutput, description="The job an earlier request with this Idempotency-Key made."
            ),
            **schema.errors(400, 401, 413, 415, 422, 429),
        },
        examples=[
            OpenApiExample(
                "An upload",
                summary="multipart/form-data with the field image",
                value={"image": "(the bytes of page.jpg)"},
                request_only=True,
                media_type="multipart/form-data",
            ),
            schema.job_example("Accepted", schema.QUEUED_JOB, 201),
            schema.job_example("The earlier job of this Idempotency-Key", schema.SUCCEEDED_JOB),
        ],
        tags=["jobs"],
        summary="Submit a photo",
    )
    def post(self, request: Request) -> Response:
        key = request.headers.get("Idempotency-Key", "").strip()
        if len(key) > 255 or not key.isprintable():
            raise exceptions.ValidationError(
                {"Idempotency-Key": "At most 255 printable characters."}
            )
        if key:
            existing = selectors.job_by_idempotency_key(request.user, key)
            if existing is not None:
                bind_job(existing.id)
                return self._job_response(existing, status.HTTP_200_OK)
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        if length > settings.SNAPREAD_MAX_UPLOAD_BYTES + MULTIPART_SLACK:
            raise UploadRefused(
                "file_too_large",
                f"The request is larger than the limit of {settings.SNAPREAD_MAX_UPLOAD_BYTES} "
                "bytes for an image.",
                413,
                limit_bytes=settings.SNAPREAD_MAX_UPLOAD_BYTES,
            )
        upload = request.FILES.get("image")
        image = normalize_upload(upload, upload.size if upload is not None else None)
        job, created = jobs.job_submit(request.user, image, key)
        bind_job(job.id)
        if created:
            log.info("job submitted", extra={"width": image.width, "height": image.height})
        return self._job_response(job, status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    def _job_response(self, job: Job, code: int) -> Response:
        payload = JobOutput(job).data
        return Response(payload, status=code, headers=job_headers(payload))


class JobDetail(APIView):
    @extend_schema(
        parameters=[schema.IF_NONE_MATCH, schema.ETAG, schema.RETRY_AFTER],
        responses={200: JobOutput, 304: schema.NOT_MODIFIED, **schema.errors(401, 404)},
        examples=[
            schema.job_example("Queued", schema.QUEUED_JOB),
            schema.job_example("Running", schema.RUNNING_JOB),
            schema.job_example("Succeeded", schema.SUCCEEDED_JOB),
            schema.job_example("Failed", schema.FAILED_JOB),
        ],
        tags=["jobs"],
        summary="One job",
        description="Poll with `If-None-Match` set to the last `ETag`: `304` while nothing "
        "changed. While the job is queued or running, `Retry-After` says when to ask again.",
    )
    def get(self, request: Request, job_id: uuid.UUID) -> Response:
        payload = JobOutput(selectors.job_of(request.user, job_id)).data
        headers = job_headers(payload)
        if _matches(request.headers.get("If-None-Match", ""), headers["ETag"]):
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers=headers)
        return Response(payload, headers=headers)

    @extend_schema(
        responses={
            204: OpenApiResponse(description="Deleted, with every file."),
            **schema.errors(401, 404),
        },
        tags=["jobs"],
        summary="Delete a job and its files",
    )
    def delete(self, request: Request, job_id: uuid.UUID) -> Response:
        jobs.job_delete(job_id, request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class JobCancel(APIView):
    @extend_schema(
        request=None,
        responses={200: JobOutput, **schema.errors(401, 404, 409)},
        examples=[schema.job_example("Canceled", schema.CANCELED_JOB)],
        tags=["jobs"],
        summary="Cancel a queued or running job",
    )
    def post(self, request: Request, job_id: uuid.UUID) -> Response:
        job = jobs.job_cancel(job_id, request.user)
        return Response(JobOutput(selectors.job_of(request.user, job.id)).data)


def _file_response(field: FieldFile) -> FileResponse:
    if not field or not default_storage.exists(field.name):
        raise exceptions.NotFound()
    content_type = mimetypes.guess_type(field.name)[0] or "application/octet-stream"
    response = FileResponse(default_storage.open(field.name, "rb"), content_type=content_type)
    response["Cache-Control"] = "private, max-age=3600"
    return response


class JobImage(APIView):
    @extend_schema(responses=IMAGE, tags=["files"], summary="The stored input image")
    def get(self, request: Request, job_id: uuid.UUID) -> FileResponse:
        return _file_response(selectors.job_of(request.user, job_id).image)


class JobAnnotated(APIView):
    @extend_schema(responses=IMAGE, tags=["files"], summary="The input with each region outlined")
    def get(self, request: Request, job_id: uuid.UUID) -> FileResponse:
        # Drawn on first request (the worker does not spend time on it), then kept.
        field = jobs.job_annotated_image(selectors.job_of(request.user, job_id))
        if field is None:
            raise exceptions.NotFound()
        return _file_response(field)


class RegionCrop(APIView):
    @extend_schema(responses=IMAGE, tags=["files"], summary="One region's crop (PNG)")
    def get(self, request: Request, job_id: uuid.UUID, index: int) -> HttpResponse:
        # From the region's row; 404 for a region stored without one.
        crop = selectors.region_of(request.user, job_id, index).crop_png
        if not crop:
            raise exceptions.NotFound()
        response = HttpResponse(bytes(crop), content_type="image/png")
        response["Cache-Control"] = "private, max-age=3600"
        return response
