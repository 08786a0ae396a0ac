"""Keep freed host memory in this process for reuse (glibc's malloc), for the ``fastme``
command line and the CPU benches; the library itself never changes process-wide settings.

A CPU forward allocates tensors of megabytes (an ME-DCNv2 x4 inference at B=4096: x_0 and
x_L of 12.8 MB each, the GEMMs' packing buffers) and frees them at the end of the call. glibc
returns such blocks to the OS (``mmap`` above its threshold, and trimming the top of the heap
beyond ``M_TRIM_THRESHOLD``), so the next call page-faults them in again: ~9,000 minor faults,
~10-20% of that inference on a 2-core VM. Raising both thresholds keeps the memory: blocks up to
32 MB come from the heap and freed memory stays there (the process keeps its peak resident size).
A process embedding fastme gets the same from the environment (docs/cpu.md):
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (True when done; False on other
    C libraries or platforms, or with ``FASTME_KEEP_FREED_MEMORY=0``)."""
    if os.environ.get("FASTME_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith(
        "linux"
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
