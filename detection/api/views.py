"""REST views: fetch input, call one service or selector, shape the answer."""

from __future__ import annotations

import mimetypes
import uuid

from django.conf import settings
from django.core.files.storage import default_storage
from django.db.models.fields.files import FieldFile
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from detection import jobs, selectors
from detection.api.pagination import JobPagination
from detection.api.serializers import ErrorBody, JobInput, JobListFilter, JobOutput
from detection.api.throttles import SubmitThrottle
from detection.uploads import UploadRefused, normalize_upload

# Multipart framing around the file; a body above the byte limit plus this is refused
# before it is parsed.
MULTIPART_SLACK = 64 * 1024
ERRORS = {code: OpenApiResponse(ErrorBody) for code in (400, 401, 404, 409, 413, 415, 422, 429)}
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    description="Retrying with the same key returns the job the first request made (200).",
)
IMAGE = {(200, "image/*"): OpenApiTypes.BINARY, 404: OpenApiResponse(ErrorBody)}


class JobListCreate(GenericAPIView):
    pagination_class = JobPagination
    serializer_class = JobOutput

    def get_throttles(self):  # type: ignore[override]
        return [SubmitThrottle()] if self.request.method == "POST" else []

    @extend_schema(
        parameters=[JobListFilter], responses={200: JobOutput(many=True), **ERRORS}, tags=["jobs"]
    )
    def get(self, request: Request) -> Response:
        # A plain dict, not the QueryDict: DRF's form-style reading would take `?status=`
        # as "no filter", which the schema (an enum) says is invalid.
        query = JobListFilter(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        page = self.paginate_queryset(
            selectors.jobs_of(request.user, query.validated_data.get("status"))
        )
        return self.get_paginated_response(JobOutput(page, many=True).data)

    @extend_schema(
        request={"multipart/form-data": JobInput},
        parameters=[IDEMPOTENCY_KEY],
        responses={201: JobOutput, 200: JobOutput, **ERRORS},
        tags=["jobs"],
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
                return Response(JobOutput(existing).data, status=status.HTTP_200_OK)
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
        return Response(
            JobOutput(job).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class JobDetail(APIView):
    @extend_schema(responses={200: JobOutput, **ERRORS}, tags=["jobs"])
    def get(self, request: Request, job_id: uuid.UUID) -> Response:
        return Response(JobOutput(selectors.job_of(request.user, job_id)).data)

    @extend_schema(responses={204: None, **ERRORS}, tags=["jobs"])
    def delete(self, request: Request, job_id: uuid.UUID) -> Response:
        jobs.job_delete(job_id, request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class JobCancel(APIView):
    @extend_schema(request=None, responses={200: JobOutput, **ERRORS}, tags=["jobs"])
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
    @extend_schema(responses=IMAGE, tags=["files"])
    def get(self, request: Request, job_id: uuid.UUID) -> FileResponse:
        return _file_response(selectors.job_of(request.user, job_id).image)


class JobAnnotated(APIView):
    @extend_schema(responses=IMAGE, tags=["files"])
    def get(self, request: Request, job_id: uuid.UUID) -> FileResponse:
        # Drawn on first request (the worker does not spend time on it), then kept.
        field = jobs.job_annotated_image(selectors.job_of(request.user, job_id))
        if field is None:
            raise exceptions.NotFound()
        return _file_response(field)


class RegionCrop(APIView):
    @extend_schema(responses=IMAGE, tags=["files"])
    def get(self, request: Request, job_id: uuid.UUID, index: int) -> FileResponse:
        return _file_response(selectors.region_of(request.user, job_id, index).crop)
