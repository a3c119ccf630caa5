"""``make bench`` (``python -m bench.e2e``): the service against its own ceiling.

On one machine, with the same N rendered 1200x1600 page photos, in one run:

- **raw**: the reference pack read directly in this process, batched as well as it can
  be (plain batches of B, and the batcher with its two halves in turn and overlapped;
  the fastest counts): images/s, the ceiling;
- **e2e**: the photos through the whole service: REST upload -> PostgreSQL -> Celery ->
  the worker as the Procfile runs it (threads pool, dynamic batching) -> PostgreSQL ->
  the client sees the result on the job's WebSocket; first upload to last result;
- **naive**: the design this replaces, in the same stack: one image per task in a
  prefork child, Tesseract started as a process per crop (pytesseract);
- **added latency** at low load: one job at a time, end-to-end time minus the chain's
  own compute (the job's stage timings), p50 and p95.

Measured alike: raw warms its chain up with one batch and counts the better of two timed
runs of each mode; e2e and naive each first read one batch of their own untimed (B
photos; one for naive), then count the better of two timed passes over the N photos
(``--passes``).

The stack is real and isolated (bench/stack.py): its own PostgreSQL database, a private
redis-server, the web process as the Procfile runs it, a Celery worker. By default every
process shares every CPU; with ``--worker-cpus``, raw and the workers run on those CPUs
and the web, Redis and this client on the others, so that the worker has what raw had
(PostgreSQL, the machine's own server, is not moved). It writes
``bench/results/latest.json`` and appends a row to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from websockets.sync.client import connect

from bench.stack import (
    BenchStack,
    Process,
    cpu_seconds,
    make_users,
    parse_cpus,
    pinned,
    servers_named,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "latest.json"
DOC = REPO / "docs" / "benchmarks.md"
TERMINAL = {"succeeded", "rejected", "failed", "canceled"}
NAIVE_OCR = {
    "backend": "pytesseract",
    "languages": "eng",
    "psm": 7,
    "allow": "0123456789.*",
    "pattern": r"\d+(?:\.\d+)*",
    "timeout_ms": 5000,
    "threads": 1,
}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__)
    p.add_argument("--images", type=int, default=40, help="N photos for raw, e2e and naive")
    p.add_argument("--latency-jobs", type=int, default=20, help="jobs for the latency run")
    p.add_argument("--batch", type=int, default=8, help="B: the worker's batch size")
    p.add_argument("--wait-ms", type=int, default=5, help="T: the worker's batch window")
    p.add_argument("--device", default="cpu", help="cpu or cuda (raw and both workers)")
    p.add_argument("--database", help="PostgreSQL server for the benchmark's own database")
    p.add_argument("--redis", help="a Redis database to use and FLUSH (default: a private one)")
    p.add_argument(
        "--passes",
        type=positive,
        default=2,
        help="timed passes of e2e and naive (the better counts)",
    )
    p.add_argument(
        "--worker-cpus",
        help="CPUs for raw and for each worker, as taskset -c writes them (0,1 or 0-3); "
        "the web, Redis and this client then run on the others (a server given by "
        "--database or --redis stays where it is). Default: everything shares every CPU",
    )
    p.add_argument("--no-doc", action="store_true", help="do not append to docs/benchmarks.md")
    args = p.parse_args()

    worker_cpus, service_cpus = split_cpus(args.worker_cpus)
    # This client, every thread it makes and every process it starts (web, Redis) run on
    # the other CPUs; raw and the workers are started on the worker's (`pinned`).
    if service_cpus is not None:
        os.sched_setaffinity(0, service_cpus)
    photos = render_photos(args.images)
    raw = measure_raw(photos, args.batch, args.device, worker_cpus)
    with Stack(args, worker_cpus) as stack:
        stack.start_worker("e2e")
        e2e = stack.best_throughput(photos, warm_up=args.batch, passes=args.passes)
        latency = stack.added_latency(photos[: args.latency_jobs])
        e2e_batches = stack.stop_worker()
        stack.start_worker("naive")
        naive = stack.best_throughput(photos, warm_up=1, passes=args.passes)
        stack.stop_worker()

    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": raw["device"],
        "cpu_cores": os.cpu_count(),
        # None: everything shared every CPU; else raw and the workers ran on these, and
        # the web, Redis and the client on the rest (PostgreSQL, the machine's, anywhere).
        "worker_cpus": sorted(worker_cpus) if worker_cpus is not None else None,
        "service_cpus": sorted(service_cpus) if service_cpus is not None else None,
        "torch": raw["torch"],
        "images": len(photos),
        "batch_size": args.batch,
        "batch_wait_ms": args.wait_ms,
        "raw_images_per_s": raw["images_per_s"],
        "raw_detail": raw,
        "e2e_images_per_s": e2e["images_per_s"],
        "e2e_detail": e2e,
        "naive_images_per_s": naive["images_per_s"],
        "naive_detail": naive,
        "e2e_over_raw": e2e["images_per_s"] / raw["images_per_s"],
        "e2e_over_naive": e2e["images_per_s"] / naive["images_per_s"],
        "added_latency_p50_ms": latency["added_p50_ms"],
        "added_latency_p95_ms": latency["added_p95_ms"],
        "latency_detail": latency,
        "batch_sizes_seen": e2e_batches,
        "gpu_utilisation": None,  # measured on CUDA devices only (nvidia-smi)
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if not k.endswith("_detail")}, indent=2))
    if not args.no_doc:
        append_row(report, args)


# -- the photos and the ceiling --------------------------------------------------------


def render_photos(n: int) -> list[bytes]:
    from workers.training.synth import fonts, render_page

    fontset = fonts("heldout")
    photos = []
    for k in range(n):
        page = render_page(96_000_000 + k, fontset).image.convert("RGB").resize((1200, 1600))
        out = io.BytesIO()
        page.save(out, "JPEG", quality=90)
        photos.append(out.getvalue())
    return photos


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def split_cpus(text: str | None) -> tuple[set[int] | None, set[int] | None]:
    """--worker-cpus: (the worker's CPUs, the other CPUs for everything else), or
    (None, None) when everything shares every CPU."""
    if text is None:
        return None, None
    allowed = os.sched_getaffinity(0)
    try:
        worker = parse_cpus(text)
    except ValueError as exc:
        raise SystemExit(f"--worker-cpus: {exc}") from None
    if not worker <= allowed:
        raise SystemExit(f"--worker-cpus {text}: this machine lets us use CPUs {sorted(allowed)}")
    rest = allowed - worker
    if not rest:
        raise SystemExit(
            f"--worker-cpus {text} leaves no CPU for the web, Redis and the client; "
            "leave at least one out"
        )
    return worker, rest


def measure_raw(
    photos: list[bytes], batch: int, device: str, cpus: set[int] | None = None
) -> dict[str, Any]:
    """The chain alone in this process, decode included; it runs in a child process so
    that its threads and memory are gone before the stack starts (on ``cpus``, when
    given, which torch then sizes its threads to)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_photos(photos, Path(tmp))
        with pinned(cpus):
            out = subprocess.run(
                raw_argv(Path(tmp), batch, device),
                cwd=REPO, check=True, capture_output=True, text=True,
            )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_photos(photos: list[bytes], folder: Path) -> None:
    """The photos as the JPEG files ``bench.raw`` reads, in order."""
    for k, data in enumerate(photos):
        (folder / f"{k:04d}.jpg").write_bytes(data)


def raw_argv(folder: Path, batch: int, device: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.raw",
        str(folder),
        "--batch",
        str(batch),
        "--device",
        device,
    ]


# -- the stack -------------------------------------------------------------------------


class Stack:
    """bench.stack's isolated stack (own database, private redis-server, the Procfile's
    web command), with the reading worker as the Procfile runs it or as the naive design."""

    def __init__(self, args: argparse.Namespace, worker_cpus: set[int] | None = None) -> None:
        self.args = args
        self.worker_cpus = worker_cpus
        # Every CPU the stack's processes may use, theirs and the worker's.
        self.cpus = os.sched_getaffinity(0) | (worker_cpus or set())
        self.bench = BenchStack(
            "e2e",
            env={
                "SNAPREAD_SUBMIT_RATE": "1000000/min",
                "SNAPREAD_MAX_UNFINISHED_JOBS": "100000",
                "SNAPREAD_DEVICE": args.device,
            },
            database_url=args.database,
            redis_url=args.redis,
        )
        self.worker: Process | None = None
        self.token = ""

    def __enter__(self) -> Stack:
        self.bench.__enter__()
        self.web = self.bench.start_web()
        [self.token] = make_users(1, "bench-e2e-")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_worker()
        self.bench.__exit__(*exc)

    @property
    def base(self) -> str:
        return self.bench.url

    # -- workers ---------------------------------------------------------------------

    def start_worker(self, kind: str) -> None:
        if kind == "e2e":
            # As the Procfile runs it: threads pool, dynamic batching.
            pool = ["-P", "threads", "-c", str(3 * self.args.batch)]
            env = {
                "SNAPREAD_BATCH_SIZE": str(self.args.batch),
                "SNAPREAD_BATCH_WAIT_MS": str(self.args.wait_ms),
            }
        else:
            # One image per task in one prefork child, Tesseract as a process per crop.
            pool = ["-P", "prefork", "-c", "1"]
            env = {"SNAPREAD_PACK": str(self._naive_pack()), "SNAPREAD_BATCH_SIZE": "1"}
        argv = ["env", *(f"{k}={v}" for k, v in env.items()), sys.executable, "-m", "celery"]
        argv += ["-A", "project", "worker", "-Q", "gpu,default", *pool, "-l", "info"]
        argv += ["-n", f"bench-{kind}@%h", "--without-gossip", "--without-mingle"]
        argv += ["--without-heartbeat"]
        with pinned(self.worker_cpus):
            self.worker = self.bench.start(f"{kind}-worker", argv)
        deadline = time.monotonic() + 180
        text = ""
        while time.monotonic() < deadline and self.worker.alive():
            text = self.worker.log_path.read_text(errors="replace")
            if " ready." in text and "reading chain loaded" in text:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the {kind} worker did not start:\n{text[-3000:]}")

    def stop_worker(self) -> dict[str, int]:
        """Stop the worker; the batch sizes it logged at shutdown."""
        if self.worker is None:
            return {}
        self.worker.stop(grace=60)
        text = self.worker.log_path.read_text(errors="replace")
        self.worker = None
        found = re.findall(r"batch sizes seen: (\{.*?\})", text)
        if not found:
            return {}
        # A plain log line holds the JSON as it is; a JSON log line holds it escaped.
        sizes = found[-1].replace('\\"', '"')
        return {str(k): v for k, v in json.loads(sizes).items()}

    def _naive_pack(self) -> Path:
        from workers.pipeline.pack import DEFAULT_PACK_DIR

        pack = self.bench.workdir / "naive-pack"
        if not pack.exists():
            shutil.copytree(DEFAULT_PACK_DIR, pack)
            manifest = json.loads((pack / "manifest.json").read_text())
            manifest["ocr"] = NAIVE_OCR
            (pack / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return pack

    # -- the client ------------------------------------------------------------------

    def submit(self, session: requests.Session, photo: bytes) -> str:
        r = session.post(
            self.base + "/api/v1/jobs/",
            files={"image": ("page.jpg", photo, "image/jpeg")},
            headers={"Authorization": f"Token {self.token}"},
            timeout=60,
        )
        if r.status_code != 201:
            raise RuntimeError(f"upload answered {r.status_code}: {r.text[:300]}")
        return str(r.json()["id"])

    def watch(self, job_id: str, timeout: float = 600) -> tuple[float, dict[str, Any]]:
        """Wait on the job's WebSocket for a terminal state: (when it was seen, the job)."""
        url = f"ws://127.0.0.1:{self.bench.port}/ws/jobs/{job_id}/?token={self.token}"
        with connect(url, origin=self.base, open_timeout=30) as ws:
            deadline = time.monotonic() + timeout
            while True:
                message = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                job = message.get("job", message)
                if job.get("status") in TERMINAL:
                    return time.perf_counter(), job

    def fetch(self, session: requests.Session, job_id: str) -> dict[str, Any]:
        r = session.get(
            f"{self.base}/api/v1/jobs/{job_id}/",
            headers={"Authorization": f"Token {self.token}"},
            timeout=30,
        )
        r.raise_for_status()
        return dict(r.json())

    def best_throughput(self, photos: list[bytes], warm_up: int, passes: int) -> dict[str, Any]:
        """As raw is measured: one batch read untimed (the web's and the worker's
        connections, threads and caches made, as raw's chain is warmed up), then the
        better of `passes` timed passes over all the photos."""
        self.throughput(photos[:warm_up])
        runs = [self.throughput(photos) for _ in range(passes)]
        for run in runs:
            # A job that failed or was rejected finished early: such a pass measures
            # something else than reading the photos.
            if set(run["statuses"]) != {"succeeded"}:
                raise RuntimeError(f"not every job succeeded in a pass: {run['statuses']}")
        best = max(runs, key=lambda run: run["images_per_s"])
        return dict(best, passes_images_per_s=[run["images_per_s"] for run in runs])

    def throughput(self, photos: list[bytes]) -> dict[str, Any]:
        """All photos uploaded by 8 concurrent clients, each job watched on its socket."""
        if not photos:
            return {}
        seen: list[float] = []
        statuses: list[str] = []
        lock = threading.Lock()
        local = threading.local()

        def one(photo: bytes) -> None:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            job_id = self.submit(session, photo)
            watcher = threading.Thread(target=lambda: record(job_id))
            watcher.start()
            watchers.append(watcher)

        def record(job_id: str) -> None:
            at, job = self.watch(job_id)
            with lock:
                seen.append(at)
                statuses.append(job["status"])

        watchers: list[threading.Thread] = []
        cpu0 = self.cpu_account()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, photos))
        uploaded = time.perf_counter()
        for watcher in watchers:
            watcher.join()
        if len(seen) < len(photos):
            # A watcher that never heard its job's outcome: the run would otherwise report
            # the rest as if nothing were missing.
            raise RuntimeError(
                f"{len(photos) - len(seen)} jobs' outcomes never reached their sockets"
            )
        elapsed = max(seen) - t0
        cpu = {k: v - cpu0[k] for k, v in self.cpu_account().items()}
        return {
            "images_per_s": len(photos) / elapsed,
            "seconds": elapsed,
            "upload_seconds": uploaded - t0,
            "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
            # Where the machine's CPU went while the photos went through: CPU ms per photo
            # of each part, and what the cores could give in that time.
            "cpu_ms_per_image": {k: round(1000 * v / len(photos), 1) for k, v in cpu.items()},
            "cpu_ms_per_image_available": round(1000 * elapsed * len(self.cpus) / len(photos), 1),
        }

    def cpu_account(self) -> dict[str, float]:
        """CPU seconds so far of each part on the machine: the worker, the web process,
        PostgreSQL (every postgres process), the private Redis, and this client."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        redis = self.bench.redis_server
        return {
            "worker": cpu_seconds(self.worker.pid) if self.worker else 0.0,
            "web": cpu_seconds(self.web.pid),
            "postgres": sum(cpu_seconds(pid) for pid in servers_named("postgres")),
            "redis": cpu_seconds(redis.pid) if redis is not None else 0.0,
            "client": usage.ru_utime + usage.ru_stime,
        }

    def added_latency(self, photos: list[bytes]) -> dict[str, Any]:
        """One job at a time: upload to result seen, minus the chain's own stage times."""
        session = requests.Session()
        totals, computes, added = [], [], []
        parts: dict[str, list[float]] = {"upload": [], "queue": [], "worker": [], "notify": []}
        for photo in photos:
            t0, wall0 = time.perf_counter(), time.time()
            job_id = self.submit(session, photo)
            uploaded = time.time()
            # The socket sends the job's current state on connect, then every change.
            seen_at, _ = self.watch(job_id)
            seen_wall = time.time() - (time.perf_counter() - seen_at)
            total_ms = (seen_at - t0) * 1000
            job = self.fetch(session, job_id)
            compute_ms = sum((job.get("timings_ms") or {}).values())
            totals.append(total_ms)
            computes.append(compute_ms)
            added.append(total_ms - compute_ms)
            created, started, finished = (
                datetime.fromisoformat(job[k]).timestamp()
                for k in ("created_at", "started_at", "finished_at")
            )
            parts["upload"].append((uploaded - wall0) * 1000)
            parts["queue"].append((started - created) * 1000)
            parts["worker"].append((finished - started) * 1000 - compute_ms)
            parts["notify"].append((seen_wall - finished) * 1000)
        q = statistics.quantiles(added, n=20, method="inclusive")
        return {
            "jobs": len(photos),
            "e2e_p50_ms": statistics.median(totals),
            "compute_p50_ms": statistics.median(computes),
            "added_p50_ms": statistics.median(added),
            "added_p95_ms": q[18],
            # Where the added time goes (medians; server clocks, same machine): the
            # upload request, created -> claimed, the worker outside the chain, and
            # finished -> seen on the socket.
            "added_parts_p50_ms": {k: statistics.median(v) for k, v in parts.items()},
        }


# -- the record ------------------------------------------------------------------------


def append_row(report: dict[str, Any], args: argparse.Namespace) -> None:
    cores = f"{report['cpu_cores']} cores"
    if report["worker_cpus"] is not None:
        cores += (
            f"; raw and worker on {cpu_list(report['worker_cpus'])}, "
            f"the rest on {cpu_list(report['service_cpus'])}"
        )
    row = (
        f"| {report['when'][:10]} | {report['device']} ({cores}) "
        f"| {report['images']} | B={report['batch_size']}, T={report['batch_wait_ms']} ms "
        f"| {report['raw_images_per_s']:.2f} | {report['e2e_images_per_s']:.2f} "
        f"| {report['naive_images_per_s']:.2f} | {report['e2e_over_raw']:.2f} "
        f"| {report['e2e_over_naive']:.1f} | {report['added_latency_p50_ms']:.0f} / "
        f"{report['added_latency_p95_ms']:.0f} ms |\n"
    )
    text = DOC.read_text()
    marker = "<!-- make bench appends rows above this line -->"
    if marker not in text:
        raise SystemExit(f"{DOC} has no '{marker}' line; the row was not recorded:\n{row}")
    DOC.write_text(text.replace(marker, row.rstrip("\n") + "\n" + marker))


def cpu_list(cpus: list[int]) -> str:
    return ("CPU " if len(cpus) == 1 else "CPUs ") + ",".join(map(str, cpus))


if __name__ == "__main__":
    main()
