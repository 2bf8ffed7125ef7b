"""Fused CPU kernels for a ConvNet block's elementwise work: instance norm, ReLU, 2x2 average pool.

On the CPU, after the convolutions, most of an outer step's time went to chains of activation-sized
PyTorch ops: each one a pass over memory, most of them into a freshly allocated (page-faulted)
tensor. `csrc/block_kernels.cpp` does the same maths in one or two passes per image with OpenMP
(formulas there and in `podd_lib.fast.block._norm_double_backward`): the block's forward, the gradient at the
conv output, and the double backward's elementwise part.

The C++ file is compiled on first use with the system compiler (`c++`, or $CXX) into a cache
folder keyed by the source, the flags and the CPU ($PODD_KERNEL_CACHE, default
~/.cache/podd_lib/kernels), and loaded with ctypes. It links the OpenMP runtime that PyTorch has
already loaded, so both share one thread pool. No compiler, or a failed build: one warning, and
the PyTorch ops run instead (same results to float32 rounding). PODD_CPU_KERNELS=0 turns the
kernels off; the config key `cpu_kernels` does the same per run.

Used only where they apply: float32 CPU tensors in channels-last memory with even H and W.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("csrc") / "block_kernels.cpp"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]

_lib: ctypes.CDLL | None = None
_tried = False


def _cpu_id() -> str:
    """What the compiled code depends on besides its source: the CPU's model and flags (for -march=native)."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [line for line in info if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(keep)))


def cache_dir() -> Path:
    """Where compiled kernels are kept (a folder under the system's temp folder if this one is not writable)."""
    env = os.environ.get("PODD_KERNEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "podd_lib" / "kernels"


def _compiler() -> str | None:
    """The C++ compiler to use, or None."""
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def build(force: bool = False) -> Path:
    """Compile the kernels (atomically, into the cache) and return the shared library's path; raises on failure."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    key = hashlib.sha256("\n".join([SOURCE.read_text(), cxx, *FLAGS, _cpu_id(), torch.__version__]).encode())
    name = f"block_kernels-{key.hexdigest()[:16]}.so"
    fallback = Path(tempfile.gettempdir()) / f"podd_lib_kernels_{getattr(os, 'getuid', lambda: 0)()}"
    for folder in (cache_dir(), fallback):
        if (folder / name).exists() and not force:
            return folder / name
        try:  # the first folder we can write to
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
            break
        except OSError:
            continue
    else:
        raise RuntimeError(f"cannot write to {cache_dir()} or {fallback}")
    out = folder / name
    os.close(fd)
    try:
        res = subprocess.run([cxx, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True)
        if res.returncode != 0:
            last = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit status {res.returncode}"
            raise RuntimeError(f"{cxx} failed: {last}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _declare(lib: ctypes.CDLL) -> None:
    """Argument types of the three entry points (pointers, then sizes)."""
    p, i, d = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    lib.podd_block_forward.argtypes = [p, p, p, d, i, i, i, i, p, p, p]
    lib.podd_block_zgrad.argtypes = [p, p, p, p, p, p, p, i, i, i, i, p, p, p]
    lib.podd_block_double.argtypes = [p, p, p, p, p, p, p, p, p, i, i, i, i, p, p, p, p]
    for f in (lib.podd_block_forward, lib.podd_block_zgrad, lib.podd_block_double):
        f.restype = None


def load() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; None when disabled or unavailable (warns once)."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("PODD_CPU_KERNELS", "1") == "0":
        return None
    try:
        lib = ctypes.CDLL(str(build()))
        _declare(lib)
        _lib = lib
    except (OSError, RuntimeError) as e:
        warnings.warn(f"podd_lib: fused CPU kernels unavailable ({e}); using PyTorch ops (same results, slower)",
                      RuntimeWarning, stacklevel=2)
    return _lib


def applies(z: Tensor) -> bool:
    """Whether the kernels take activation z: float32 on the CPU, channels-last memory, even H and W."""
    return (z.device.type == "cpu" and z.dtype == torch.float32 and z.dim() == 4 and z.shape[2] % 2 == 0
            and z.shape[3] % 2 == 0 and z.is_contiguous(memory_format=torch.channels_last))


def _cl(t: Tensor) -> Tensor:
    """t in channels-last memory (no copy if it already is)."""
    return t.contiguous(memory_format=torch.channels_last)


def _ptr(t: Tensor | None) -> int | None:
    """Data pointer, or None (NULL) for an absent tensor."""
    return None if t is None else t.data_ptr()


def _pooled_like(z: Tensor) -> Tensor:
    """An empty channels-last tensor of z's pooled (H/2, W/2) shape."""
    n, c, h, w = z.shape
    return torch.empty((n, c, h // 2, w // 2), dtype=z.dtype, memory_format=torch.channels_last)


_scratch = threading.local()


def _scratch_like(z: Tensor) -> Tensor:
    """A channels-last tensor of z's shape in this thread's reusable buffer, valid until the next reuse.

    For the conv output gradient gz, which every caller hands to the convolution's backward and
    drops: reusing one buffer spares an activation-sized allocation (and its page faults) per call.
    """
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < z.numel():
        buf = _scratch.buf = torch.empty(z.numel(), dtype=torch.float32)
    n, c, h, w = z.shape
    return buf[: z.numel()].as_strided((n, c, h, w), (h * w * c, 1, w * c, c))


def _vec(t: Tensor | None) -> Tensor | None:
    """A per-channel float32 vector, contiguous and detached (None stays None)."""
    return None if t is None else t.detach().to(torch.float32).contiguous()


def block_forward(lib: ctypes.CDLL, z: Tensor, gamma: Tensor, beta: Tensor, eps: float
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """(p, mean, rstd): p = avg_pool2x2(relu(instance_norm(z))), mean and rstd per (image, channel)."""
    n, c, h, w = z.shape
    p, mean, rstd = _pooled_like(z), z.new_empty(n, c), z.new_empty(n, c)
    g, b = _vec(gamma), _vec(beta)
    lib.podd_block_forward(z.data_ptr(), g.data_ptr(), b.data_ptr(), float(eps), n, h, w, c,
                           p.data_ptr(), mean.data_ptr(), rstd.data_ptr())
    return p, mean, rstd


def block_zgrad(lib: ctypes.CDLL, gp: Tensor, z: Tensor, gamma: Tensor, beta: Tensor, mean: Tensor, rstd: Tensor,
                extra: Tensor | None = None, scratch: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(gz, g_gamma, g_beta): from the pooled gradient gp back to the conv output z (plus extra, if given).

    scratch=True: gz lives in this thread's reusable buffer (see `_scratch_like`); use it before the next call.
    """
    n, c, h, w = z.shape
    gp, extra = _cl(gp.detach()), None if extra is None else _cl(extra.detach())
    gz = _scratch_like(z) if scratch else torch.empty_like(z, memory_format=torch.channels_last)
    g_gam, g_bet = z.new_empty(n, c), z.new_empty(n, c)
    g, b = _vec(gamma), _vec(beta)
    lib.podd_block_zgrad(gp.data_ptr(), z.data_ptr(), g.data_ptr(), b.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
                         _ptr(extra), n, h, w, c, gz.data_ptr(), g_gam.data_ptr(), g_bet.data_ptr())
    return gz, g_gam.sum(0), g_bet.sum(0)


def block_double(lib: ctypes.CDLL, gp: Tensor, z: Tensor, gamma: Tensor, beta: Tensor, mean: Tensor, rstd: Tensor,
                 u: Tensor | None, a: Tensor | None, b: Tensor | None, want_gz: bool, scratch: bool = False
                 ) -> tuple[Tensor | None, Tensor, Tensor, Tensor | None]:
    """(gz or None, d_gp, d_z, d_gamma or None): the elementwise part of `_ConvBlockGrad`'s backward.

    u, a, b: upstream gradients of gz, g_gamma and g_beta (None: zero). d_gamma is None when u is.
    scratch=True: gz lives in this thread's reusable buffer (see `_scratch_like`).
    """
    n, c, h, w = z.shape
    gp, u = _cl(gp.detach()), None if u is None else _cl(u.detach())
    gz = (_scratch_like(z) if scratch else torch.empty_like(z, memory_format=torch.channels_last)) if want_gz else None
    d_gp, d_z, d_gam = _pooled_like(z), torch.empty_like(z, memory_format=torch.channels_last), z.new_empty(n, c)
    g, be, a, b = _vec(gamma), _vec(beta), _vec(a), _vec(b)
    lib.podd_block_double(gp.data_ptr(), z.data_ptr(), g.data_ptr(), be.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
                          _ptr(u), _ptr(a), _ptr(b), n, h, w, c, _ptr(gz), d_gp.data_ptr(), d_z.data_ptr(),
                          d_gam.data_ptr())
    return gz, d_gp, d_z, (d_gam.sum(0) if u is not None else None)
