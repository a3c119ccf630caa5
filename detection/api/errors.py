"""One JSON error shape everywhere: {"code": ..., "message": ..., "detail": ...}."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ObjectDoesNotExist, PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from detection.jobs import JobError, NotCancelable, TooManyUnfinishedJobs
from detection.uploads import UploadRefused


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"code": code, "message": message, "detail": detail}


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, UploadRefused):
        return Response(error_body(exc.code, exc.message, exc.detail or None), status=exc.status)
    if isinstance(exc, JobError):
        code = {
            NotCancelable: status.HTTP_409_CONFLICT,
            TooManyUnfinishedJobs: status.HTTP_429_TOO_MANY_REQUESTS,
        }.get(type(exc), status.HTTP_400_BAD_REQUEST)
        return Response(error_body(exc.code, exc.message, exc.detail or None), status=code)
    if isinstance(exc, ObjectDoesNotExist | Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    if isinstance(exc, exceptions.ValidationError):
        response.data = error_body("invalid", "The request is not valid.", exc.detail)
    elif isinstance(exc, exceptions.Throttled):
        wait = int(exc.wait or 1)
        response.data = error_body(
            "throttled",
            f"Too many submissions; try again in {wait} seconds.",
            {"retry_after": wait},
        )
    else:
        code = exc.get_codes()
        response.data = error_body(
            code if isinstance(code, str) else exc.default_code, str(exc.detail)
        )
    return response


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith(("/api/", "/healthz", "/readyz"))


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse(error_body("not_found", "Not found."), status=404)
    return defaults.page_not_found(request, exception or Http404())


def server_error(request: HttpRequest) -> HttpResponse:
    if _wants_json(request):
        body = error_body("server_error", "Something went wrong on our side.")
        return JsonResponse(body, status=500)
    return defaults.server_error(request)
