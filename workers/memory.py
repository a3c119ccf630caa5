"""How a reading process's C allocator treats the memory the models free.

Every batch allocates the same large blocks again: the photos' tensors, each layer's
activations, the crops' inputs. With glibc's defaults each of them above the mmap
threshold is a fresh mapping, zeroed page by page by the kernel, and given back when
freed; each thread that allocates gets an arena of its own (up to eight per core), and
free memory at the top of a heap is returned to the system as soon as it passes 128 KiB.
On the CPU, a reading process spent about a sixth of its CPU time in the kernel doing
this (about 20,000 page faults a photo; docs/benchmarks.md, "The allocator").

``hold_freed_memory`` makes the process keep that memory for its next batch instead: one
arena for all its threads, blocks up to 1 GiB from the heap, and the heap's free top
kept. The process then holds what its largest batch needed, no more (its resident size
fell in the same measurement, with fewer arenas to fragment).

Call it once, at the start of a process that reads photos, before its threads allocate:
an arena a thread has already made stays. glibc only; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

HELD = (
    (M_ARENA_MAX, 1),
    (M_MMAP_THRESHOLD, 1 << 30),
    (M_TRIM_THRESHOLD, 1 << 30),
    (M_TOP_PAD, 64 << 20),
)


def hold_freed_memory() -> bool:
    """Keep freed memory in this process for its next use (module docstring); True when
    glibc took every setting."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        # Only glibc answers to this; musl and the other C libraries have no mallopt.
        libc.gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError, TypeError):
        log.info("allocator left as it is: not glibc")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    taken = all(mallopt(param, value) == 1 for param, value in HELD)
    if not taken:
        log.warning("glibc refused a malloc setting; the allocator keeps some defaults")
    return taken
