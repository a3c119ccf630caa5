# One image for every Snapread process (web, worker, beat, flower); compose.yaml picks
# the command. Torch comes as the CUDA build, which also runs on a CPU.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY requirements/ requirements/
RUN apt-get update \
    && grep -vE '^\s*(#|$)' requirements/apt.txt | xargs apt-get install -y --no-install-recommends \
    && rm -rf /var/lib/apt/lists/*
RUN pip install -r requirements/worker.txt

COPY . .
RUN useradd --create-home --uid 1000 snapread \
    && mkdir -p /data/media /app/var \
    && chown -R snapread /data /app/var
USER snapread

ENV MEDIA_ROOT=/data/media STATIC_ROOT=/app/var/static SNAPREAD_PACK=/app/models/reference
RUN DEBUG=1 python manage.py collectstatic --no-input >/dev/null

EXPOSE 8000
CMD ["env", "MALLOC_ARENA_MAX=2", "PROMETHEUS_MULTIPROC_DIR=/app/var/web-metrics", \
     "uvicorn", "project.asgi:application", "--host", "0.0.0.0", "--port", "8000", \
     "--workers", "2", "--http", "httptools", "--loop", "uvloop", "--ws", "websockets", \
     "--lifespan", "off", "--no-access-log"]
