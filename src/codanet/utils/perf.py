"""CPU performance settings for long-running commands (training, benchmarks).

glibc returns every large freed block to the OS (munmap) and page-faults it in again on the next
allocation; a training step allocates tensors of ~100 MB many times, and on these 2-core machines
the page faults cost more than the arithmetic (measured: writing 138 MB into fresh memory 38 ms,
into reused memory 5 ms).  `keep_freed_memory()` tells glibc to serve large blocks from its heap
and never to trim it, which makes the DAU layers ~2x faster; the process keeps its peak memory.
(Trimming only above 1 GB, as before 2026-11-29, still page-faulted models whose steps free more
than that, e.g. the materialised reference: 5.5 s per coda_s step without trimming, 6.9-8.9 s with.)
It is not applied on import; the CLI's train, bench and demo commands call it.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Ask glibc malloc to keep freed memory for reuse; returns False where not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
    except (OSError, AttributeError):
        return False
