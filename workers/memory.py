"""How a reading process's C allocator treats the memory the models free.

Every batch allocates the same large blocks again: the photos' tensors, each layer's
activations, the crops' inputs. With glibc's defaults each of them above the mmap
threshold (which glibc raises by itself only up to 32 MiB) is a fresh mapping, zeroed
page by page by the kernel, and unmapped when freed; each thread that allocates gets an
arena of its own (up to eight per core), whose heaps hold at most 64 MiB. On the CPU, a
reading process spent about a sixth of its CPU time in the kernel doing this (about
20,000 page faults a photo; docs/benchmarks.md, "The allocator").

``hold_freed_memory`` makes the process keep that memory for its next batch instead: one
arena for all its threads, blocks up to 1 GiB from the heap, and up to 1 GiB of free
space at the heap's top kept rather than given back. The process then stays at the
largest size it ever reached (its peak fell in the same measurement: one arena fragments
less than one per thread).

Call it once, at the start of a process that reads photos, before its threads allocate:
an arena a thread has already made stays. It overrides ``MALLOC_*`` variables and
``GLIBC_TUNABLES`` for these four settings. It needs glibc 2.35 or later (older ones
refuse an mmap threshold above 32 MiB); elsewhere, or with another allocator preloaded,
it changes nothing.
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

# In this order, and all or nothing past the first: the trim threshold or the top pad
# set without the mmap threshold would stop glibc from raising that threshold by itself
# and map every block above 128 KiB afresh (far worse than the defaults).
HELD = (
    ("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD, 1 << 30),
    ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, 1 << 30),
    ("M_TOP_PAD", M_TOP_PAD, 64 << 20),
    ("M_ARENA_MAX", M_ARENA_MAX, 1),
)


def glibc_malloc() -> ctypes.CDLL | None:
    """This process's C library when it is glibc and its malloc is the one in use."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version
        version.restype = ctypes.c_char_p
        major, minor = (int(part) for part in version().decode().split(".")[:2])
        in_use = ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value
        own = ctypes.cast(libc.malloc, ctypes.c_void_p).value
    except (OSError, AttributeError, TypeError, ValueError):
        log.info("allocator left as it is: not glibc")
        return None
    if (major, minor) < (2, 35):
        log.info("allocator left as it is: glibc %d.%d (2.35 or later needed)", major, minor)
        return None
    if in_use != own:
        log.info("allocator left as it is: another malloc is preloaded")
        return None
    return libc


def hold_freed_memory() -> bool:
    """Keep freed memory in this process for its next use (module docstring); True when
    glibc took every setting."""
    libc = glibc_malloc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    for name, param, value in HELD:
        if not 0 < value < 2**31:  # a C int; ctypes would wrap it silently
            raise ValueError(f"{name}={value} does not fit mallopt")
        if mallopt(param, value) != 1:
            log.warning("glibc refused %s=%d; the allocator keeps its other defaults", name, value)
            return False
    return True
