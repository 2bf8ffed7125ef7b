"""The optional CPU speed backend: the same maths as the reference layers of `podd_lib.models`, faster.

    block    -- a ConvNet block (conv, instance norm, ReLU, avg-pool) as one autograd op with
                hand-written derivatives; less than half the memory per unrolled RaT-BPTT step
    kernels  -- the block's elementwise work in compiled C++ (csrc/block_kernels.cpp), built on
                first use; PyTorch ops when no compiler is found
    runtime  -- process-wide allocator settings (glibc malloc keeps freed memory)
    compiled -- GPU levers, off by default: torch.compile of the plain training steps (RaT-BPTT's
                curriculum, the vmapped evaluation) and bfloat16 autocast

The config's `backend` chooses: "fast" uses this package as the fine-grained keys (fused_blocks,
channels_last, cpu_kernels, real_chunk) say, "reference" runs PyTorch's layers in NCHW with no
compiled kernels, and "auto" is "fast" on the CPU and "reference" elsewhere (the fast path has
only been measured on the CPU). bfloat16 autocast (`autocast = "bfloat16"`) runs on the reference
layers, so "auto" resolves to "reference" when it is on. Timings are in benchmarks/README.md.

Importing this package changes nothing in the process; `enable_runtime()` does, and the `podd`
command, the benchmarks and the notebooks' set-up call it before their first tensor.
"""

from __future__ import annotations

import os

BACKENDS = ("auto", "fast", "reference")
COMPILE_MODES = ("none", "default", "reduce-overhead")  # config key compile_steps (`compiled`)
AUTOCAST = ("none", "bfloat16")  # config key autocast (`compiled`)


def resolve_backend(backend: str, device: str, conv_dtype: str = "float32", autocast: str = "none") -> str:
    """"fast" or "reference" for a config's backend on a device ("auto": fast on the CPU or for bfloat16 convs, reference under autocast)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        if autocast != "none":
            return "reference"
        on_cpu = str(device).split(":")[0] == "cpu"
        return "fast" if on_cpu or conv_dtype != "float32" else "reference"
    return backend


def enable_runtime() -> None:
    """Put large CPU tensors on transparent huge pages unless THP_MEM_ALLOC_ENABLE is already set.

    PyTorch's CPU allocator reads the variable once, at its first allocation of 2 MB or more, so
    call this before any large tensor exists. Activation-sized temporaries then cost far fewer page
    faults, at the same peak memory (see benchmarks/README.md). Export THP_MEM_ALLOC_ENABLE=0 to opt out.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
