"""Process-wide settings made once by the entry points (the CLI, a sweep's worker processes), never by a run."""

from __future__ import annotations

import ctypes
import os
import platform

from painn_ablate.core.cache import INDUCTOR, default_cache_dir


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


def use_inductor_cache() -> str:
    """One persistent torch.compile cache for every run, trial and worker on this machine; returns its folder.

    TORCHINDUCTOR_CACHE_DIR is <project cache>/inductor (core.cache) unless already set (an explicit setting
    wins), and inductor's FX graph cache and AOT autograd cache are on unless set off: a configuration
    compiled once (~90 s on 2 CPU cores) then compiles in ~6 s in every later process (a sweep's next
    trial, a worker, the next `train`). Environment only, before torch first compiles (torch reads the
    folder at each compile and the switches when its compiler loads); spawned workers inherit it.
    """
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default_cache_dir() / INDUCTOR))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]
