"""The fault suite's own PostgreSQL cluster, a fresh stack per test, and the summary.

Helpers live in tests/faults/stack.py (imported under one name by conftest and tests,
so the reports collected by the tests are the ones printed here).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.servers import REPO, PostgresCluster
from tests.faults.stack import REPORTS, TEMPLATE_DB, Stack, base_env


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REPORTS:
        terminalreporter.section("fault suite: recovery and executions per job")
        for report in REPORTS:
            terminalreporter.write_line(report.line())


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    # Not under pytest's tmp_path: its folders are private to us, and as root the cluster
    # runs as `postgres`, which must reach its data directory.
    workdir = Path(tempfile.mkdtemp(prefix="snapread-faults-pg-"))
    cluster = PostgresCluster(workdir)
    cluster.init()
    try:
        cluster.sql(f"CREATE DATABASE {TEMPLATE_DB}")
        env = dict(base_env(), DATABASE_URL=cluster.url(TEMPLATE_DB))
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v", "0"],
            cwd=REPO, env=env, check=True, capture_output=True, timeout=180,
        )  # fmt: skip
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def stack(postgres: PostgresCluster, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(postgres, tmp_path)
    try:
        yield s
    finally:
        s.close()
