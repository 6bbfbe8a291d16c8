"""Keep freed memory in the process (glibc) instead of handing it back to the kernel.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap``
and returns it with ``munmap`` on free. A CPU training step allocates and frees activations of
that size dozens of times, so the kernel zero-fills every 4 KiB page again on each step; on a
virtual machine those page faults took a third of the CPU time of the study's unimatch step on
DeepLabv3+ (docs/benchmarks.md, "Freed memory kept"). Serving large blocks from the heap and
trimming it only past 2 GiB free keeps the pages mapped: the process holds its peak footprint
instead, which a training run reaches in its first steps anyway. Numerics are untouched: only
where a tensor's memory comes from changes."""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters from glibc's <malloc.h>
M_MMAP_MAX = -4
TRIM_ABOVE = 2**31 - 1  # bytes free at the heap's top before glibc trims it: mallopt's largest int


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap (``M_MMAP_MAX`` 0) and trim it only past 2 GiB free,
    process-wide from here on. False where the C library is not glibc (macOS, Windows, musl):
    nothing is changed there."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the symbols the process already has: its libc
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE))
