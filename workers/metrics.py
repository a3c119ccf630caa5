"""Worker metrics for Prometheus: what the definitions are, how to record them, how they
are served.

Recording (`observe_*`) happens wherever a task runs: the worker's own process with the
threads or solo pool, or its children with the prefork pool. Serving happens in the
worker's main process, on `WORKER_METRICS_PORT` (0: off), started from project.celery's
signals. With the prefork pool the children's values reach the main process through
prometheus_client's multiprocess mode: set `PROMETHEUS_MULTIPROC_DIR` to a directory of
this worker's own before it starts (prometheus_client reads it at import). Queue depth
is not recorded at all: it is read from Redis at each scrape, so it is never stale.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
LONG_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

JOBS = Counter(
    "snapread_worker_jobs",
    "Reading tasks a worker finished, by outcome (succeeded, rejected, failed; lost: the "
    "job was canceled or taken back meanwhile; not_queued: a duplicate message).",
    ["status"],
)
STAGE_SECONDS = Histogram(
    "snapread_worker_stage_seconds",
    "Time the reading chain spent in each stage of one image, as the chain measured it.",
    ["stage"],
    buckets=SECONDS,
)
QUEUE_WAIT_SECONDS = Histogram(
    "snapread_worker_job_queue_wait_seconds",
    "From submission to a worker's claim, for jobs a worker finished.",
    buckets=LONG_SECONDS,
)
RUN_SECONDS = Histogram(
    "snapread_worker_job_run_seconds",
    "From a worker's claim to the stored result, by outcome.",
    ["status"],
    buckets=LONG_SECONDS,
)
BATCH_SIZE = Histogram(
    "snapread_worker_batch_size",
    "Images the chain read together in one batch.",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
)
GPU_MEMORY = Gauge(
    "snapread_worker_gpu_memory_bytes",
    "CUDA memory of the processes that hold the chain (kind: allocated, reserved, "
    "peak_allocated), summed over live processes.",
    ["device", "kind"],
    multiprocess_mode="livesum",
)


def observe_job(status: str) -> None:
    JOBS.labels(status=status.replace(" ", "_")).inc()


def observe_stage(stage: str, seconds: float) -> None:
    STAGE_SECONDS.labels(stage=stage).observe(max(0.0, seconds))


def observe_batch(size: int) -> None:
    BATCH_SIZE.observe(size)


def observe_times(status: str, queue_wait_s: float | None, run_s: float | None) -> None:
    if queue_wait_s is not None:
        QUEUE_WAIT_SECONDS.observe(max(0.0, queue_wait_s))
    if run_s is not None:
        RUN_SECONDS.labels(status=status).observe(max(0.0, run_s))


def observe_gpu_memory() -> None:
    """Record CUDA memory, only where this process already uses CUDA: asking would
    otherwise initialise it (and a prefork parent must never touch CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    for index in range(torch.cuda.device_count()):
        device = str(index)
        GPU_MEMORY.labels(device, "allocated").set(torch.cuda.memory_allocated(index))
        GPU_MEMORY.labels(device, "reserved").set(torch.cuda.memory_reserved(index))
        GPU_MEMORY.labels(device, "peak_allocated").set(torch.cuda.max_memory_allocated(index))


# -- queue depth, read at scrape time -------------------------------------------------

# kombu's Redis transport keeps one list per queue and priority step; a message sent
# without a priority goes to the plain name.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


def queue_keys(queue: str) -> list[str]:
    return [queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]


class QueueDepthCollector(Collector):
    """`snapread_queue_depth{queue}`: messages waiting in each Celery queue (Redis LLEN),
    not counting those a worker has taken and not yet acknowledged."""

    def __init__(self, redis_url: str, queues: Iterable[str]) -> None:
        self.redis_url = redis_url
        self.queues = sorted(set(queues))
        self._client: Any = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "snapread_queue_depth",
            "Messages waiting in a Celery queue (Redis LLEN).",
            labels=["queue"],
        )
        up = GaugeMetricFamily(
            "snapread_queue_depth_up", "1 when the broker answered the last queue-depth read."
        )
        try:
            depths = self._depths()
        except Exception:
            log.warning("could not read the queue depths from Redis", exc_info=True)
            up.add_metric([], 0)
        else:
            for queue, depth in depths.items():
                family.add_metric([queue], depth)
            up.add_metric([], 1)
        yield family
        yield up

    def _depths(self) -> dict[str, int]:
        import redis

        if self._client is None:
            self._client = redis.Redis.from_url(
                self.redis_url, socket_timeout=1, socket_connect_timeout=1
            )
        pipe = self._client.pipeline(transaction=False)
        for queue in self.queues:
            for key in queue_keys(queue):
                pipe.llen(key)
        lengths = iter(pipe.execute())
        return {queue: sum(next(lengths) for _ in PRIORITY_STEPS) for queue in self.queues}


# -- serving --------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def clear_stale_files(directory: str) -> None:
    """Remove what earlier runs left in the multiprocess directory; keep this process's
    own files (its metrics may already hold values)."""
    mine = f"_{os.getpid()}.db"
    for path in glob.glob(os.path.join(directory, "*.db")):
        if not path.endswith(mine):
            os.remove(path)


def scrape_registry(redis_url: str, queues: Iterable[str]) -> CollectorRegistry:
    """What the worker's endpoint serves: every process's metrics and the queue depths."""
    registry = CollectorRegistry()
    directory = multiprocess_dir()
    if directory:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        registry.register(_Forward(REGISTRY))
    registry.register(QueueDepthCollector(redis_url, queues))
    return registry


class _Forward(Collector):
    """This process's default registry, inside another registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        return iter(self.source.collect())


def serve(port: int, addr: str, registry: CollectorRegistry) -> Any:
    """Start the HTTP endpoint on a daemon thread; returns the server (to shut down)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server


def mark_process_dead(pid: int) -> None:
    directory = multiprocess_dir()
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)
