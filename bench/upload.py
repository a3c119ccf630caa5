"""``python -m bench.upload``: upload throughput through the real web server.

Starts web exactly as the Procfile serves it, on a database and a redis-server of its
own (bench/stack.py), then, from one asyncio client with ``--clients`` connections on
loopback, runs five phases of ``--seconds`` each against the same server:

1. ``get``: ``GET /api/v1/jobs/{id}/`` of a stored job, the floor of an authenticated
   API request (token lookup, one job query, the JSON), for the ratio;
2. ``upload``: ``POST /api/v1/jobs/`` of 1200x1600 JPEG page photos as a phone sends
   them (camera EXIF, upright), validation on: sniffed, bounded, fully decoded,
   normalised, stored, job row written, Celery message sent;
3. ``upload_rotated``: the same photos stored sideways with EXIF orientation 6, which
   must be turned (and so re-encoded) before they are stored;
4. and 5. ``get_alone``, ``upload_alone``: phases 1 and 2 from one connection, one
   request at a time: a request's own latency on an idle server (to compare two
   versions of the code, run it on each checkout in the order A B B A).

No worker runs: jobs stay queued and their messages wait in the benchmark's own Redis,
which the measure does not depend on. ``--db-pool`` (20) sets DATABASE_POOL_MAX_SIZE;
``--web-env KEY=VALUE`` adds to the web process's environment (MALLOC_ARENA_MAX=2, say);
``--profile DIR`` samples the web process with py-spy, one folded-stack file a phase
(``--profile-gil``: only the thread holding the interpreter lock).
The per-user submit rate and the cap on unfinished jobs are raised
(``SNAPREAD_SUBMIT_RATE=1000000/min``, ``SNAPREAD_MAX_UNFINISHED_JOBS=1000000``) and
both are still checked on every upload: their cost is in the numbers, their refusals
are not.

Reports requests/s, latency p50/p99, every status seen, the web process's CPU time per
request (from /proc, so less sensitive to what else runs than requests/s is) and its
peak resident memory, plus the validation alone in this process for each photo kind.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.photos import multipart_body, page_photo
from bench.stack import (
    BenchStack,
    add_stack_arguments,
    cpu_seconds,
    machine_load,
    make_users,
    process_tree,
    rss_mb,
    write_report,
)

LIMITS = {"SNAPREAD_SUBMIT_RATE": "1000000/min", "SNAPREAD_MAX_UNFINISHED_JOBS": "1000000"}
TARGET_UPLOADS_PER_S = 100
TARGET_RSS_MB = 250


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    web_cpu_s: float = 0.0

    def report(self) -> dict:
        ok = sorted(self.latencies_ms)
        done = sum(self.statuses.values())
        return {
            "requests": done,
            "per_s": round(done / self.seconds, 1) if self.seconds else None,
            "latency_ms_p50": round(ok[len(ok) // 2], 1) if ok else None,
            "latency_ms_p99": round(ok[min(len(ok) - 1, int(len(ok) * 0.99))], 1) if ok else None,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "client_errors": dict(self.errors),
            "web_cpu_ms_per_request": round(1000 * self.web_cpu_s / done, 2) if done else None,
        }


class RssSampler:
    """Peak resident memory of the largest process of a server, and of all of them."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self.peak_total = 0.0
        self.processes = 1

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            sizes = [rss_mb(p) for p in process_tree(self.pid)]
            self.processes = max(self.processes, len(sizes))
            self.peak = max(self.peak, *sizes)
            self.peak_total = max(self.peak_total, sum(sizes))
            await asyncio.sleep(0.1)


async def run_phase(
    phase: Phase,
    url: str,
    clients: int,
    seconds: float,
    tokens: list[str],
    make_request,  # (session, client index, n) -> awaitable response context
    web_pid: int,
) -> None:
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
        # One request per connection first, so that connecting is not in the measure.
        await asyncio.gather(*(_warm(session, tokens[i % len(tokens)]) for i in range(clients)))
        cpu0, t0 = cpu_seconds(web_pid), time.perf_counter()
        deadline = t0 + seconds

        async def client(index: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    async with make_request(session, index, n) as response:
                        await response.read()
                        phase.statuses[response.status] += 1
                        if response.status < 400:
                            phase.latencies_ms.append((time.perf_counter() - start) * 1000)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    phase.errors[type(exc).__name__] += 1
                n += 1

        await asyncio.gather(*(client(i) for i in range(clients)))
        phase.seconds = time.perf_counter() - t0
        phase.web_cpu_s = cpu_seconds(web_pid) - cpu0


async def _warm(session: aiohttp.ClientSession, token: str) -> None:
    async with session.get("/healthz", headers={"Authorization": f"Token {token}"}) as r:
        await r.read()


def validation_alone_ms(photo: bytes, repeat: int = 10) -> float:
    from detection.uploads import normalize_upload

    normalize_upload(io.BytesIO(photo))
    t0 = time.perf_counter()
    for _ in range(repeat):
        normalize_upload(io.BytesIO(photo))
    return round((time.perf_counter() - t0) * 1000 / repeat, 2)


def _profile(pid: int, name: str, args: argparse.Namespace) -> subprocess.Popen:
    """py-spy samples the web process (every thread) for the phase: folded stacks."""
    out = Path(args.profile) / f"{name}.folded"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(pid)]
    command.append("--subprocesses")  # the server's processes (uvicorn --workers), not only it
    command += ["-o", str(out), "--format", "raw"]
    command += ["--rate", "250", "--nonblocking", "--duration", str(round(args.seconds))]
    if args.profile_gil:
        command.append("--gil")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def measure(stack: BenchStack, web, tokens: list[str], args: argparse.Namespace) -> dict:
    upright = [page_photo(100 + k) for k in range(args.photos)]
    rotated = [page_photo(200 + k, orientation=6) for k in range(args.photos)]
    bodies = {
        "upload": [multipart_body(p) for p in upright],
        "upload_rotated": [multipart_body(p) for p in rotated],
    }
    # A stored job for the GET baseline, made through the API like any other.
    body, content_type = bodies["upload"][0]
    async with aiohttp.ClientSession(stack.url) as session:
        headers = {"Authorization": f"Token {tokens[0]}", "Content-Type": content_type}
        async with session.post("/api/v1/jobs/", data=body, headers=headers) as r:
            assert r.status == 201, await r.text()
            job_id = (await r.json())["id"]

    def get(session: aiohttp.ClientSession, index: int, n: int):
        return session.get(
            f"/api/v1/jobs/{job_id}/", headers={"Authorization": f"Token {tokens[0]}"}
        )

    def post(kind: str):
        def request(session: aiohttp.ClientSession, index: int, n: int):
            body, content_type = bodies[kind][(index + n) % len(bodies[kind])]
            headers = {
                "Authorization": f"Token {tokens[(index + n) % len(tokens)]}",
                "Content-Type": content_type,
            }
            return session.post("/api/v1/jobs/", data=body, headers=headers)

        return request

    sampler = RssSampler(web.pid)
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(stop))
    rss_start = rss_mb(web.pid)
    # The three loaded phases, then GET and upload from one client, one request at a
    # time: a request's own latency on an otherwise idle server.
    runs = [
        (Phase("get"), args.clients, get),
        (Phase("upload"), args.clients, post("upload")),
        (Phase("upload_rotated"), args.clients, post("upload_rotated")),
        (Phase("get_alone"), 1, get),
        (Phase("upload_alone"), 1, post("upload")),
    ]
    phases = [phase for phase, _, _ in runs]
    for phase, clients, request in runs:
        profiler = _profile(web.pid, phase.name, args) if args.profile else None
        await run_phase(phase, stack.url, clients, args.seconds, tokens, request, web.pid)
        if profiler is not None:
            profiler.wait(timeout=60)
    stop.set()
    await sampling

    reports = {p.name: p.report() for p in phases}
    uploads = reports["upload"]
    return {
        "machine": machine_load(),
        "phases": reports,
        "upload_over_get": round(uploads["per_s"] / reports["get"]["per_s"], 3),
        "web_processes": sampler.processes,
        "web_rss_mb": {
            "start": round(rss_start, 1),
            "peak_per_process": round(sampler.peak, 1),
            "peak_all_processes": round(sampler.peak_total, 1),
        },
        "target": {
            "uploads_per_s": TARGET_UPLOADS_PER_S,
            "met": uploads["per_s"] >= TARGET_UPLOADS_PER_S,
            "web_rss_mb": TARGET_RSS_MB,
            "rss_met": sampler.peak < TARGET_RSS_MB,
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.upload", description=__doc__)
    p.add_argument("--clients", type=int, default=16, help="concurrent connections")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    p.add_argument("--photos", type=int, default=8, help="distinct photos per kind")
    p.add_argument("--users", type=int, default=20)
    add_stack_arguments(p, pool_for="the web process")
    p.add_argument("--profile", metavar="DIR", help="sample the web process with py-spy")
    p.add_argument(
        "--profile-gil",
        action="store_true",
        help="with --profile: sample only the thread holding the GIL (what serialises requests)",
    )
    p.add_argument(
        "--web-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the web process, e.g. MALLOC_ARENA_MAX=2",
    )
    p.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="measure this web command too (${PORT} is set), after the Procfile's, in the "
        "same run on the same database; e.g. 'daphne=daphne -p ${PORT} project.asgi:application'",
    )
    args = p.parse_args()

    env = dict(LIMITS, DATABASE_POOL_MAX_SIZE=str(args.db_pool))
    env.update(item.split("=", 1) for item in args.web_env)
    servers = [("procfile", None)] + [tuple(s.split("=", 1)) for s in args.server]
    with BenchStack("upload", env, args.database_url, args.redis_url, args.keep) as stack:
        tokens = make_users(args.users, "upload")
        results = {}
        for name, command in servers:
            web = stack.start_web(command=command, name=f"web-{name}")
            results[name] = asyncio.run(measure(stack, web, tokens, args))
            results[name]["command"] = command or procfile_web()
            web.stop()
        from detection.models import Job

        photo = page_photo(100)
        first = results["procfile"]["phases"]["upload"]["per_s"]
        report = {
            "benchmark": "upload",
            "command": " ".join(
                ["python -m bench.upload", f"--clients {args.clients} --seconds {args.seconds:g}"]
                + [f"--db-pool {args.db_pool}"]
                + [f"--web-env {item}" for item in args.web_env]
                + [f"--server '{item}'" for item in args.server]
            ),
            "photo": {"size": [1200, 1600], "jpeg_bytes": len(photo), "distinct": args.photos},
            "limits": LIMITS,
            "database_pool_max_size": args.db_pool,
            "web_env": args.web_env,
            "clients": args.clients,
            "servers": results,
            "uploads_per_s_over_procfile": {
                name: round(r["phases"]["upload"]["per_s"] / first, 2)
                for name, r in results.items()
            },
            "jobs_stored": Job.objects.count(),
            "validation_alone_ms": {
                "upright": validation_alone_ms(photo),
                "rotated": validation_alone_ms(page_photo(200, orientation=6)),
            },
            "load_after": machine_load(),
        }
    write_report(report, args.out)


def procfile_web() -> str:
    from project.devstack import REPO, parse_procfile

    return parse_procfile((REPO / "Procfile").read_text())["web"]


if __name__ == "__main__":
    main()
