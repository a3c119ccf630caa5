"""Web metrics for Prometheus, and the request context every log line carries.

Requests are counted by method, *route* (the URL pattern, `api/v1/jobs/<uuid:job_id>/`,
never the path, so label values stay few whatever clients send) and status. /metrics
answers loopback clients that did not come through a proxy, or anyone presenting
`Authorization: Bearer $METRICS_TOKEN`; everyone else gets a 403.
"""

from __future__ import annotations

import contextlib
import glob
import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from detection.logging import job_id_var, new_request_id, request_id_var

log = logging.getLogger("detection.requests")

METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
UNMATCHED = "<unmatched>"

REQUESTS = Counter(
    "snapread_http_requests",
    "HTTP requests the web process answered, by method, route (URL pattern) and status.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "snapread_http_request_duration_seconds",
    "Time from the request reaching Django to the response leaving it, by method and route.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def route_of(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    return match.route if match is not None and match.route else UNMATCHED


class RequestMiddleware:
    """Outermost middleware: a request id (X-Request-ID, kept from the client when it
    looks like one), the job id a URL names, one access log line, and the metrics."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = new_request_id(request.headers.get("X-Request-ID"))
        request_token = request_id_var.set(request_id)
        job_token = job_id_var.set(None)
        started = time.perf_counter()
        try:
            response = self.get_response(request)
            elapsed = time.perf_counter() - started
            response["X-Request-ID"] = request_id
            self._record(request, response, elapsed)
            return response
        finally:
            job_id_var.reset(job_token)
            request_id_var.reset(request_token)

    def process_view(self, request: HttpRequest, view: Callable, args: tuple, kwargs: dict) -> None:
        if "job_id" in kwargs:
            job_id_var.set(str(kwargs["job_id"]))

    def _record(self, request: HttpRequest, response: HttpResponse, elapsed: float) -> None:
        method = request.method if request.method in METHODS else "other"
        route = route_of(request)
        REQUESTS.labels(method, route, str(response.status_code)).inc()
        LATENCY.labels(method, route).observe(elapsed)
        log.info(
            "%s %s %s",
            request.method,
            request.get_full_path()[:500],
            response.status_code,
            extra={
                "method": request.method,
                "route": route,
                "status": response.status_code,
                "duration_ms": round(elapsed * 1000, 2),
            },
        )


def _from_loopback(request: HttpRequest) -> bool:
    # Behind a proxy on the same host every request comes from loopback; a forwarded
    # request is therefore never taken for a local one.
    if "HTTP_X_FORWARDED_FOR" in request.META or "HTTP_FORWARDED" in request.META:
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def _has_token(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(presented, token)


def prepare_multiprocess_dir(directory: str) -> None:
    """Make the web's multiprocess directory ready before this process records anything.

    Every web process of a server (uvicorn ``--workers N``) writes its values to files
    named by its pid there, and /metrics, whichever process answers, sums them all
    (prometheus_client's multiprocess mode). Each process clears out the files of
    processes that are gone, an earlier run's or a sibling that died, and never a live
    sibling's: their counts would otherwise be summed into this run's for good.
    """
    os.makedirs(directory, exist_ok=True)
    for path in glob.glob(os.path.join(directory, "*.db")):
        pid = os.path.basename(path).rsplit("_", 1)[-1].removesuffix(".db")
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):  # a sibling removed it first
                os.remove(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _registry() -> CollectorRegistry:
    if settings.PROMETHEUS_MULTIPROC_DIR:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=settings.PROMETHEUS_MULTIPROC_DIR)
        return registry
    return REGISTRY


def metrics_view(request: HttpRequest) -> HttpResponse:
    allowed = _has_token(request) or (settings.METRICS_ALLOW_LOOPBACK and _from_loopback(request))
    if not allowed:
        return JsonResponse(
            {
                "code": "forbidden",
                "message": "Metrics are served to loopback clients or with the metrics token.",
                "detail": None,
            },
            status=403,
        )
    return HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)
