"""Process-wide settings of the fast backend: speed and memory, never results.

Two things decide how fast the CPU runs PoDD besides the maths: the convolution kernels and the
cost of fresh activation-sized allocations. glibc's malloc hands blocks over 32 MB (a width-128
activation of 96 images is 50 MB) straight to and from the kernel, so every such tensor is
paid for again in page faults. `podd_lib.fast.enable_runtime()` puts large tensors on transparent
huge pages; `keep_freed_memory` goes further.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """glibc malloc: serve large blocks from the heap and keep freed memory for reuse; False if unsupported.

    No page faults for repeated activation-sized tensors, at some extra peak memory; the gain is
    measured in benchmarks/README.md. Lasts for the process.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


