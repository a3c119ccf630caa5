"""Snapread settings: one module, configured only from the environment.

Every value comes through a small typed helper that fails loudly on a bad value, so a
typo in a deployment is an error at start, not a surprise at run time.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlparse

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name)
    if value is None or value == "":
        if default is None:
            raise ImproperlyConfigured(f"Set the environment variable {name}.")
        return default
    return value


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value == "":
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use 1/0, true/false).")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer.") from None


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def database_from_url(url: str) -> dict:
    parsed = urlparse(url)
    if parsed.scheme not in ("postgres", "postgresql"):
        raise ImproperlyConfigured(f"DATABASE_URL must be postgres://..., not {parsed.scheme}://")
    return {
        "ENGINE": "project.postgres",
        "NAME": unquote(parsed.path.lstrip("/")),
        "USER": unquote(parsed.username or ""),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": parsed.hostname or "",
        "PORT": str(parsed.port or ""),
        "OPTIONS": dict(parse_qsl(parsed.query), **_pool_options()),
        "CONN_MAX_AGE": env_int("DATABASE_CONN_MAX_AGE", 0),
        "CONN_HEALTH_CHECKS": True,
    }


def _pool_options() -> dict:
    """``DATABASE_POOL_MAX_SIZE=N`` (N > 0): each process holds at most N connections.

    Under ASGI every request runs in a thread of its own, so without a pool a burst of
    requests opens one connection each and PostgreSQL refuses those past its
    max_connections with a 500 (bench/load.py found it); a pool makes them wait their
    turn instead, and saves a connect per request. Excludes DATABASE_CONN_MAX_AGE.
    On by default: 32 covers the worker's 24 threads and the web process's bursts within
    PostgreSQL's default 100 connections for one web and one worker; 0 turns it off.
    Connections are checked when taken (CONN_HEALTH_CHECKS), so a restarted database
    costs a reconnect, not a failed request; the engine's check reads the socket and
    makes a round trip only when the server has said something (project/postgres).
    """
    size = env_int("DATABASE_POOL_MAX_SIZE", 32)
    if size <= 0:
        return {}
    timeout = float(env_int("DATABASE_POOL_TIMEOUT", 30))
    return {"pool": {"min_size": 1, "max_size": size, "timeout": timeout}}


def _load_devstack_env(path: Path) -> None:
    """`make run` may have started embedded servers: other terminals find them here."""
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        if key in ("DATABASE_URL", "REDIS_URL") and not os.environ.get(key):
            os.environ[key] = value.strip()


_load_devstack_env(BASE_DIR / "var" / "devstack.env")

DEBUG = env_bool("DEBUG", True)
SECRET_KEY = env_str("SECRET_KEY", "dev-only-insecure-key-do-not-deploy" if DEBUG else None)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

# Behind TLS (the default outside DEBUG) cookies are secure and plain HTTP is redirected,
# except the probes, which orchestrators call on the container's plain port.
HTTPS = env_bool("SNAPREAD_HTTPS", not DEBUG)
SECURE_SSL_REDIRECT = HTTPS
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
if env_bool("SNAPREAD_BEHIND_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

INSTALLED_APPS = [
    "daphne",
    "detection.admin_site.AdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from here: no CDN (air-gapped hosts)
    "channels",
    "detection",
]

MIDDLEWARE = [
    "detection.metrics.RequestMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/snapread")
DATABASES = {"default": database_from_url(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "snapread",
        # Without it every request under ASGI opens a new connection (detection/redis_pool.py).
        "OPTIONS": {"pool_class": "detection.redis_pool.SharedConnectionPool"},
    }
}
# Live job updates travel over Redis pub/sub. The list-based RedisChannelLayer lost
# updates: a web process pops every socket's messages with one blocking pop at a time,
# made by whichever socket's receive holds its lock; when that socket closed (a watcher
# leaving after its job's outcome), the pop was cancelled with a message for another
# socket already taken from Redis, and that socket never heard its job's outcome (about
# 1 job in 500 in bench.e2e). Pub/sub pushes each update to the process, where a closing
# socket takes nothing with it; it also subscribes again after Redis restarts, where the
# lists' group memberships were gone for good. tests/web/test_channel_layer.py.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": "snapread:asgi"},
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "var" / "static")))
# Stored images are never served from a public URL: only the permission-checked views
# in detection.api read them, so MEDIA_URL is deliberately not routed anywhere.
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(BASE_DIR / "var" / "media")))
MEDIA_URL = "/media-not-served/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG
FILE_UPLOAD_PERMISSIONS = 0o640

# Uploads and jobs.
SNAPREAD_MAX_UPLOAD_BYTES = env_int("SNAPREAD_MAX_UPLOAD_BYTES", 20 * 1024 * 1024)
SNAPREAD_MAX_PIXELS = env_int("SNAPREAD_MAX_PIXELS", 50_000_000)
# What the worker stores per job, whatever the pack's manifest allows.
SNAPREAD_MAX_REGIONS = env_int("SNAPREAD_MAX_REGIONS", 500)
SNAPREAD_MAX_CROP_PIXELS = env_int("SNAPREAD_MAX_CROP_PIXELS", 1_048_576)
# All of a job's crops as PNG, together (they go into its regions' rows in one insert).
SNAPREAD_MAX_CROP_BYTES = env_int("SNAPREAD_MAX_CROP_BYTES", 16 * 1024 * 1024)
SNAPREAD_MAX_UNFINISHED_JOBS = env_int("SNAPREAD_MAX_UNFINISHED_JOBS", 200)
SNAPREAD_SUBMIT_RATE = env_str("SNAPREAD_SUBMIT_RATE", "120/min")

# The reading chain (loaded only in worker processes).
SNAPREAD_PACK = env_str("SNAPREAD_PACK", str(BASE_DIR / "models" / "reference"))
SNAPREAD_DEVICE = env_str("SNAPREAD_DEVICE", "auto")
if SNAPREAD_DEVICE not in ("auto", "cpu", "cuda"):
    raise ImproperlyConfigured(f"SNAPREAD_DEVICE={SNAPREAD_DEVICE!r}: use auto, cpu or cuda.")
# Dynamic batching in each worker process (workers/batching.py): up to BATCH_SIZE images
# per batch, waiting at most BATCH_WAIT_MS after the first. Run the worker with the
# threads pool and at least 3 x BATCH_SIZE threads (one batch collecting, one on the
# accelerator, one in crop/OCR), as the Procfile does.
SNAPREAD_BATCH_SIZE = env_int("SNAPREAD_BATCH_SIZE", 8)
SNAPREAD_BATCH_WAIT_MS = env_int("SNAPREAD_BATCH_WAIT_MS", 5)
SNAPREAD_WARM_UP = env_bool("SNAPREAD_WARM_UP", True)
# The accelerator half of a batch (classify, detect) overlapped with the CPU half (crop,
# OCR) of the one before. Off runs both halves in turn on one thread.
SNAPREAD_BATCH_OVERLAP = env_bool("SNAPREAD_BATCH_OVERLAP", True)
# The worker keeps the memory its batches free for the next batch instead of handing it
# back to the system and faulting it in again (workers/memory.py; glibc 2.35 or later).
SNAPREAD_HOLD_MEMORY = env_bool("SNAPREAD_HOLD_MEMORY", True)
if SNAPREAD_BATCH_SIZE < 1 or SNAPREAD_BATCH_WAIT_MS < 0:
    raise ImproperlyConfigured("SNAPREAD_BATCH_SIZE must be >= 1 and SNAPREAD_BATCH_WAIT_MS >= 0.")

# Delivery: the row is the truth, the broker a hint. A running job holds a lease that
# each stage renews; the sweeper takes back jobs whose lease ran out and re-sends jobs
# that have waited too long in `queued` (their message may have been lost).
SNAPREAD_LEASE_SECONDS = env_int("SNAPREAD_LEASE_SECONDS", 180)
SNAPREAD_MAX_ATTEMPTS = env_int("SNAPREAD_MAX_ATTEMPTS", 3)
SNAPREAD_SWEEP_INTERVAL_SECONDS = env_int("SNAPREAD_SWEEP_INTERVAL_SECONDS", 15)
SNAPREAD_RESEND_AFTER_SECONDS = env_int("SNAPREAD_RESEND_AFTER_SECONDS", 120)
SNAPREAD_READY_CACHE_SECONDS = env_int("SNAPREAD_READY_CACHE_SECONDS", 5)

CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 240)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 300)
if CELERY_TASK_TIME_LIMIT <= CELERY_TASK_SOFT_TIME_LIMIT:
    raise ImproperlyConfigured("CELERY_TASK_TIME_LIMIT must exceed CELERY_TASK_SOFT_TIME_LIMIT.")
CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Redis re-delivers an unacked message after the visibility timeout; keep it well above
# the hard limit so a healthy long task is not delivered twice (a duplicate would be a
# no-op anyway: the claim is a conditional UPDATE).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 2 * CELERY_TASK_TIME_LIMIT + 60)
}
if CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] <= CELERY_TASK_TIME_LIMIT:
    raise ImproperlyConfigured("CELERY_VISIBILITY_TIMEOUT must exceed CELERY_TASK_TIME_LIMIT.")
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# The reading chain loads in each new worker child before it reports alive; allow for it.
CELERY_WORKER_PROC_ALIVE_TIMEOUT = float(env_int("CELERY_WORKER_PROC_ALIVE_TIMEOUT", 180))
CELERY_WORKER_SEND_TASK_EVENTS = True
# A task-sent event per upload lets Flower list jobs still waiting in the queue; it costs
# the web process a second publish to the broker an upload (docs/benchmarks.md), and
# Flower sees every task from the moment a worker takes it without it. Opt in.
CELERY_TASK_SEND_SENT_EVENT = env_bool("CELERY_TASK_SEND_SENT_EVENT", False)
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "workers.tasks.read_job": {"queue": "gpu"},
    "workers.tasks.sweep": {"queue": "default"},
}
CELERY_BEAT_SCHEDULE = {
    "sweep": {
        "task": "workers.tasks.sweep",
        "schedule": float(SNAPREAD_SWEEP_INTERVAL_SECONDS),
        "options": {"expires": float(SNAPREAD_SWEEP_INTERVAL_SECONDS)},
    }
}
CELERY_BEAT_SCHEDULE_FILENAME = env_str(
    "CELERY_BEAT_SCHEDULE_FILENAME", str(BASE_DIR / "var" / "celerybeat-schedule")
)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "detection.api.pagination.JobPagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "detection.api.errors.exception_handler",
    "DEFAULT_THROTTLE_RATES": {"submit": SNAPREAD_SUBMIT_RATE},
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "TITLE": "Snapread API",
    "DESCRIPTION": "Photos in, structured answers out. See docs/api.md.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
}

# Metrics (Prometheus). The web serves /metrics to loopback clients that did not come
# through a proxy (METRICS_ALLOW_LOOPBACK) and to `Authorization: Bearer $METRICS_TOKEN`.
# Each worker serves its own on WORKER_METRICS_PORT (0: off) in its main process; with the
# prefork pool also set PROMETHEUS_MULTIPROC_DIR (see docs/operations.md).
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
METRICS_ALLOW_LOOPBACK = env_bool("METRICS_ALLOW_LOOPBACK", True)
PROMETHEUS_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
WORKER_METRICS_PORT = env_int("WORKER_METRICS_PORT", 0)
WORKER_METRICS_ADDR = env_str("WORKER_METRICS_ADDR", "127.0.0.1")
if not 0 <= WORKER_METRICS_PORT <= 65535:
    raise ImproperlyConfigured(f"WORKER_METRICS_PORT={WORKER_METRICS_PORT} is not a port.")

# Flower, linked from the admin index (empty: no link). `make run` serves it on FLOWER_PORT.
FLOWER_URL = env_str(
    "FLOWER_URL", f"http://127.0.0.1:{env_int('FLOWER_PORT', 5555)}/" if DEBUG else ""
)

# Logs: one JSON object per line (the default outside DEBUG) with the job id and request
# id of the line's context, or plain text for a terminal.
LOG_FORMAT = env_str("LOG_FORMAT", "text" if DEBUG else "json")
if LOG_FORMAT not in ("json", "text"):
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r}: use json or text.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "detection.logging.ContextFilter"}},
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "detection.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
