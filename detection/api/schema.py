"""What the OpenAPI schema says beyond the code: examples, error answers, headers and the
two ways to authenticate. The views pick from here, so each operation documents exactly
the answers it can give."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse

from detection.api.serializers import ErrorBody

JOB_ID = "6f1c2b7e-3d4a-4e5f-9a8b-1c2d3e4f5a6b"
JOB_URL = f"/api/v1/jobs/{JOB_ID}"

QUEUED_JOB: dict[str, Any] = {
    "id": JOB_ID,
    "status": "queued",
    "stage": None,
    "classification": None,
    "regions": [],
    "image_url": f"{JOB_URL}/image/",
    "annotated_url": None,
    "width": 1600,
    "height": 1200,
    "sha256": "9f2c4b1e0d8a7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b",
    "timings_ms": {},
    "error": None,
    "attempts": 0,
    "pack": None,
    "created_at": "2026-11-24T16:15:40.156937Z",
    "started_at": None,
    "finished_at": None,
}
RUNNING_JOB = {
    **QUEUED_JOB,
    "status": "running",
    "stage": "detect",
    "attempts": 1,
    "started_at": "2026-11-24T16:15:40.189945Z",
}
SUCCEEDED_JOB = {
    **RUNNING_JOB,
    "status": "succeeded",
    "stage": None,
    "classification": {"label": "page", "score": 0.998, "relevant": True},
    "regions": [
        {
            "index": 0,
            "box": [112.0, 80.5, 301.2, 140.0],
            "label": "number",
            "score": 0.97,
            "text": "3.14",
            "confidence": 91.0,
            "crop_url": f"{JOB_URL}/regions/0/crop/",
        }
    ],
    "annotated_url": f"{JOB_URL}/annotated/",
    "timings_ms": {"classify": 8.1, "detect": 61.0, "crop": 2.3, "ocr": 40.2},
    "pack": {"name": "reference", "version": "1.0.0"},
    "finished_at": "2026-11-24T16:15:40.338825Z",
}
CANCELED_JOB = {
    **QUEUED_JOB,
    "status": "canceled",
    "finished_at": "2026-11-24T16:15:41.002113Z",
}
FAILED_JOB = {
    **RUNNING_JOB,
    "status": "failed",
    "stage": None,
    "error": {"code": "reader_error", "message": "The reader failed: RuntimeError: ..."},
    "finished_at": "2026-11-24T16:15:41.430019Z",
}


def job_example(name: str, value: dict[str, Any], status: int = 200, summary: str = "") -> Any:
    return OpenApiExample(
        name, value=value, summary=summary or name, response_only=True, status_codes=[status]
    )


# -- errors ---------------------------------------------------------------------------

_ERRORS: dict[int, tuple[str, list[tuple[str, str, Any]]]] = {
    400: (
        "The request is not valid: a bad query value, header or form field.",
        [
            (
                "invalid",
                "The request is not valid.",
                {"created_after": ["Datetime has wrong format. Use ISO 8601."]},
            ),
            ("missing_image", "Send the image in the multipart field `image`.", None),
        ],
    ),
    401: (
        "No credentials, or credentials that are not valid.",
        [
            ("not_authenticated", "Authentication credentials were not provided.", None),
            ("authentication_failed", "Invalid token.", None),
        ],
    ),
    404: ("No such job (or region), or not yours.", [("not_found", "Not found.", None)]),
    409: (
        "The job is finished and cannot be canceled.",
        [("not_cancelable", "The job is succeeded; only queued or running jobs cancel.", None)],
    ),
    413: (
        "The file is over the byte or pixel limit.",
        [
            (
                "file_too_large",
                "The file is larger than the limit of 20971520 bytes (20 MB).",
                {"limit_bytes": 20971520, "size_bytes": 31457280},
            ),
            (
                "too_many_pixels",
                "12000x10000 pixels is more than the limit of 50000000 pixels (50 MP).",
                {"limit_pixels": 50000000},
            ),
        ],
    ),
    415: (
        "Not a JPEG, PNG or WebP by its content.",
        [
            (
                "unsupported_format",
                "Send a JPEG, PNG or WebP image; this file is none of those (judged by its "
                "content, not its name).",
                None,
            )
        ],
    ),
    422: (
        "The image does not decode.",
        [("corrupt_image", "The JPEG image could not be decoded: image file is truncated.", None)],
    ),
    429: (
        "Too many submissions, or too many unfinished jobs.",
        [
            ("throttled", "Too many submissions; try again in 12 seconds.", {"retry_after": 12}),
            (
                "too_many_unfinished_jobs",
                "You have 200 unfinished jobs and the limit is 200; wait for some to finish.",
                {"limit": 200},
            ),
        ],
    ),
}


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    """The error answers of one operation, each in the one error shape, with examples."""
    responses = {}
    for status in statuses:
        description, examples = _ERRORS[status]
        responses[status] = OpenApiResponse(
            ErrorBody,
            description=description,
            examples=[
                OpenApiExample(
                    f"{status} {code}",
                    value={"code": code, "message": message, "detail": detail},
                    response_only=True,
                    status_codes=[status],
                )
                for code, message, detail in examples
            ],
        )
    return responses


# -- headers --------------------------------------------------------------------------

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    description="Retrying with the same key returns the job the first request made (200).",
)
IF_NONE_MATCH = OpenApiParameter(
    "If-None-Match",
    str,
    OpenApiParameter.HEADER,
    description="An ETag from an earlier answer: `304` with no body while the job is unchanged.",
)
ETAG = OpenApiParameter(
    "ETag",
    str,
    OpenApiParameter.HEADER,
    response=[200, 304],
    description="Changes with every change of the job (status, stage, results).",
)
RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    OpenApiTypes.INT,
    OpenApiParameter.HEADER,
    response=[200, 201, 304],
    description="Only while the job is queued or running: seconds to wait before polling again.",
)
NOT_MODIFIED = OpenApiResponse(description="The job is unchanged since the ETag given.")


class TokenScheme(OpenApiAuthenticationExtension):
    target_class = "rest_framework.authentication.TokenAuthentication"
    name = "tokenAuth"
    priority = 1

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Authorization: Token <key>`; `python manage.py create_api_token "
            "USER` prints a key. The WebSocket takes the same key as `?token=<key>`.",
        }


class SessionScheme(OpenApiAuthenticationExtension):
    target_class = "rest_framework.authentication.SessionAuthentication"
    name = "cookieAuth"
    priority = 1

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": "sessionid",
            "description": "The session of a login at /accounts/login/ (the browser page). "
            "POST and DELETE also need the `X-CSRFToken` header from the `csrftoken` cookie.",
        }
