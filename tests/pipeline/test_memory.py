"""workers.memory: a process that holds freed memory reuses it instead of faulting it in
again, on every thread (what the worker's batches do, on a smaller scale)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.memory import glibc_malloc

REPO = Path(__file__).resolve().parents[2]

# A thread allocates and frees a 100 MiB block twenty times, as a batch's tensors are.
# Under glibc's defaults that block is too large for a thread's own arena (at most 64 MiB)
# and above the largest mmap threshold glibc picks by itself (32 MiB), so every round maps
# it afresh and the kernel faults in each of its pages again.
CHILD = """
import json, resource, sys, threading
from workers.memory import hold_freed_memory

held = sys.argv[1] == "held" and hold_freed_memory()

def churn():
    for _ in range(20):
        block = bytearray(100 << 20)  # zero-filled: every page touched
        del block

def faults_of(work):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_of(churn)  # the first rounds may grow the heap
print(json.dumps({"held": held, "faults": faults_of(churn)}))
"""


def churn(side: str) -> dict:
    # The allocator as glibc starts it, whatever this process was started with.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    env.pop("LD_PRELOAD", None)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, side], cwd=REPO, env=env, check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def huge_pages_always() -> bool:
    # Then a 100 MiB block faults in 2 MiB at a time, and the counts below mean little.
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.exists() and "[always]" in path.read_text()


@pytest.mark.skipif(glibc_malloc() is None, reason="needs glibc 2.35+ and its malloc in use")
@pytest.mark.skipif(huge_pages_always(), reason="transparent huge pages are always on")
def test_a_process_holding_freed_memory_does_not_fault_it_in_again() -> None:
    held, defaults = churn("held"), churn("defaults")
    assert held["held"] is True
    assert defaults["held"] is False
    pages = 20 * (100 << 20) // 4096
    # Under the defaults each round faults in most of the block's pages again.
    assert defaults["faults"] > pages // 2, defaults
    # Held, the thread reuses what the first rounds left: a few pages, not the block.
    assert held["faults"] < pages // 100, held
