"""bench.e2e --worker-cpus: the CPU lists it reads and the pinning it relies on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.e2e import split_cpus
from bench.stack import parse_cpus, pinned


def test_cpu_lists_read_as_taskset_writes_them() -> None:
    assert parse_cpus("0") == {0}
    assert parse_cpus("0,1") == {0, 1}
    assert parse_cpus("0-3") == {0, 1, 2, 3}
    assert parse_cpus("0-1, 4") == {0, 1, 4}
    for bad in ("", "a", "1-", "-1", "0;1", "1-0", "0,3-2", "\u0660"):
        with pytest.raises(ValueError, match="not a CPU list"):
            parse_cpus(bad)


def child_cpus() -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one")
def test_a_process_started_while_pinned_runs_on_those_cpus_only() -> None:
    everywhere = os.sched_getaffinity(0)
    first = min(everywhere)
    with pinned({first}):
        assert child_cpus() == [first]
    assert os.sched_getaffinity(0) == everywhere
    assert child_cpus() == sorted(everywhere)
    with pytest.raises(RuntimeError), pinned({first}):
        raise RuntimeError("the run failed")
    assert os.sched_getaffinity(0) == everywhere
    with pinned(None):
        assert child_cpus() == sorted(everywhere)


def test_the_worker_cpus_leave_the_rest_to_the_service() -> None:
    everywhere = os.sched_getaffinity(0)
    assert split_cpus(None) == (None, None)
    if len(everywhere) > 1:
        first = min(everywhere)
        assert split_cpus(str(first)) == ({first}, everywhere - {first})
    with pytest.raises(SystemExit, match="leaves no CPU"):
        split_cpus(",".join(map(str, sorted(everywhere))))
    with pytest.raises(SystemExit, match="lets us use CPUs"):
        split_cpus(str(max(everywhere) + 1))
    with pytest.raises(SystemExit, match="not a CPU list"):
        split_cpus("")
