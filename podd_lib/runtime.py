"""Process-wide settings: speed and memory (never results), and PyTorch's deterministic mode for a run.

Two things decide how fast the CPU runs PoDD besides the maths: the convolution kernels and the
cost of fresh activation-sized allocations. glibc's malloc hands blocks over 32 MB (a width-128
activation of 96 images is 50 MB) straight to and from the kernel, so every such tensor is
paid for again in page faults. `import podd_lib` already puts large tensors on transparent huge
pages (see `podd_lib/__init__.py`); `keep_freed_memory` goes further.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from contextlib import contextmanager
from typing import Iterator

import torch

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """glibc malloc: serve large blocks from the heap and keep freed memory for reuse; False if unsupported.

    No page faults for repeated activation-sized tensors, at some extra peak memory. Before the
    compiled kernels (`podd_lib.kernels`) the cpu-bench outer step took 11.4 s instead of 12.6 s;
    with them the gain is within run-to-run noise (README, "Speed"). Lasts for the process.
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


CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs for deterministic results (PyTorch's reproducibility notes)


@contextmanager
def deterministic_mode(on: bool = True, device: str | torch.device = "cpu") -> Iterator[None]:
    """Inside the block, PyTorch's deterministic algorithms (and cuDNN's, on CUDA); the flags are restored after.

    Sets `torch.use_deterministic_algorithms(True, warn_only=True)` (an op without a deterministic
    implementation warns instead of stopping the run), oneDNN's deterministic attribute, and on CUDA
    cuDNN deterministic with benchmark autotuning off and $CUBLAS_WORKSPACE_CONFIG (if unset; cuBLAS
    reads it when its first handle is made, so a run sets it before its first CUDA op).
    Uninitialised memory is not filled with NaN, which the deterministic mode otherwise does for
    every `torch.empty`: the kit writes every tensor it allocates before reading it.
    on=False changes nothing. A run is bitwise reproducible only at a fixed thread count (README).
    """
    if not on:
        yield
        return
    cudnn, mkldnn = torch.backends.cudnn, torch.backends.mkldnn
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory, cudnn.deterministic, cudnn.benchmark,
             mkldnn.deterministic)
    env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if torch.device(device).type == "cuda" and env is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    cudnn.deterministic, cudnn.benchmark, mkldnn.deterministic = True, False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.utils.deterministic.fill_uninitialized_memory = saved[2]
        cudnn.deterministic, cudnn.benchmark, mkldnn.deterministic = saved[3:]
        if env is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
