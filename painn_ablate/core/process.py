"""Process-wide settings made once by the entry points (the CLI, a sweep's worker processes), never by a run."""

from __future__ import annotations

import ctypes
import platform


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of handing it back to the OS (Linux; process-wide).

    Every step allocates and frees the same large activations (the (E, L*3F) filters are 7.7 MB at the
    default size). By default glibc maps each afresh and the first touch of every page faults: 10-15%
    of a CPU step on 2 threads (benchmarks/bench.py). Returns whether it applied.
    """
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**30))
