"""Process settings under which the training loop is fast on CPU; for the stage (or a script) to call once.

The agents' work is many small kernels plus a few medium matmuls: one intra-op thread avoids OpenMP spinning
(several times slower on a shared machine), and keeping freed memory in the process (glibc malloc thresholds)
avoids a page fault per page of every large temporary (about 2,000 per SAC update).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def configure_cpu(threads: int = 1, keep_memory: bool = True) -> bool:
    """Set torch's intra-op threads and (glibc only) stop returning freed memory to the OS.

    Returns whether the allocator settings were applied (False off glibc). Affects the whole process.
    """
    torch.set_num_threads(int(threads))
    if not keep_memory:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    limit = 1 << 30
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))
