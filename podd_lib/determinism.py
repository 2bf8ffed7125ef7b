"""PyTorch's deterministic mode for one run: the same command on the same machine gives the same poster.

Set when a run starts and restored when it returns, never on import (docs/reproducibility.md).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

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
    on=False changes nothing. A run is bitwise reproducible only at a fixed thread count (docs/reproducibility.md).
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


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else the platform's processor string)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Tracked files that are the kit's own results, not its code: a run that appends to them leaves the code as committed.
RESULT_PATHS = ("outputs", "benchmarks/probes.jsonl", "benchmarks/probes.md")


def kit_commit(root: Path | None = None) -> str:
    """The git commit of the kit's checkout ('+dirty' when tracked code changed), or 'unknown' outside git."""
    import subprocess

    root = Path(__file__).resolve().parent.parent if root is None else Path(root)
    code = ["--", ".", *(f":(exclude){p}" for p in RESULT_PATHS)]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", *code],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def environment(device: str | torch.device = "cpu") -> dict:
    """What decides whether a run's bits come back: kit commit, versions, thread count, CPU and device."""
    import platform

    import numpy

    env = {"kit_commit": kit_commit(), "python": platform.python_version(), "torch": torch.__version__,
           "numpy": numpy.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model()}
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return env
