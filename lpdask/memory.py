"""Process memory: how glibc's allocator serves a run's tensors, handing freed memory back between
chunks, and the peak.

By default glibc maps every block over its mmap threshold (at most 32 MiB) afresh and unmaps it when
freed, so each large activation costs page faults and the kernel zeroing its pages again: a third of
a CPU run's time went to the kernel (x4plus on 1024^2: 620 of 1566 CPU seconds).
:func:`reuse_freed_memory` makes large blocks come from the heap and stay there for the next
strip's tensors of the same sizes. Blocks the heap keeps make a process running chunk after chunk
hold more than it uses (1.51 GiB peak where the tensors alive at once need about 1.05 GiB: one RRDB
per stage, 192 px chunks), so ``malloc_trim(0)`` after each chunk or tile returns the free pages,
as dask.distributed advises for its workers; the peak was then 1.22 GiB.

Threads other than the first get heaps of their own from glibc ("arenas"), and an arena other than
the main one maps every block over 64 MiB afresh whatever the settings: a tile or chunk runs on a
pool thread, so a streamed x4plus tile's wide strips (a 64-channel strip 4096 px wide is 134 MB)
were mapped and zeroed again each strip (80 of 321 CPU seconds in the kernel on a 256 x 1024 input;
2 with one arena). :func:`reuse_freed_memory` therefore also gives all threads the main arena; a
thread keeps the arena it had, so a run sets this before it starts its threads.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import MutableMapping
from functools import cache


M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
"""mallopt's parameter numbers (malloc.h)."""
REUSE = {M_MMAP_MAX: (0, ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_")),
         M_TRIM_THRESHOLD: (2**31 - 1, ("MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold")),
         M_ARENA_MAX: (1, ("MALLOC_ARENA_MAX", "glibc.malloc.arena_max"))}
"""What :func:`reuse_freed_memory` sets, and the environment variables (or GLIBC_TUNABLES entries)
by which a user (or dask's nanny, which sets MALLOC_TRIM_THRESHOLD_) configured it instead."""


@cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None  # musl has neither


def trim() -> None:
    """Return the allocator's free pages to the system (glibc only; elsewhere nothing)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@cache
def reuse_freed_memory() -> bool:
    """Make glibc serve large blocks from its main heap, for every thread started from now on, and
    keep freed ones there for reuse, instead of a fresh mmap per block that is unmapped when freed
    (once per process; glibc only). A setting configured in the environment is left alone. Returns
    whether large blocks now come from the heap."""
    libc = _glibc()
    if libc is None:
        return False
    configured = " ".join([*os.environ, os.environ.get("GLIBC_TUNABLES", "")])
    applied = {parameter: not any(name in configured for name in names) and bool(libc.mallopt(parameter, value))
               for parameter, (value, names) in REUSE.items()}
    return applied[M_MMAP_MAX]


def peak_bytes() -> int:
    """This process's own peak resident memory: ``VmHWM`` on Linux. ``ru_maxrss`` is the fallback
    elsewhere; Linux carries it over from the parent across fork and exec, so a run started from
    a process holding 3 GB would report at least 3 GB."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def prefer_expandable_segments(environ: MutableMapping[str, str] = os.environ) -> None:
    """Ask torch's CUDA allocator for expandable segments, unless the user configured the allocator:
    windows of varying size otherwise leave its cache 1.5-2.5x the memory in use (measured on an
    H200), past the planner's prediction. Takes effect only before the process's first CUDA use."""
    if "PYTORCH_CUDA_ALLOC_CONF" not in environ and "PYTORCH_ALLOC_CONF" not in environ:
        environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
