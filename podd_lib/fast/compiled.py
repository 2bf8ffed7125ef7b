"""GPU speed levers, off by default: torch.compile of the plain training steps, and bfloat16 autocast.

RaT-BPTT's curriculum (up to totwindow - window plain inner steps per outer step) and the
evaluation's training steps are many small kernels each; at bs_d = 96 on a GPU their launch cost,
not their arithmetic, sets the pace. `compile_steps` compiles one such step (forward, gradient,
Adam update) into one program: "default" is torch.compile's inductor (fused elementwise work),
"reduce-overhead" replays it as a CUDA graph as well. The maths is the eager step's
(`torch.func.grad` instead of `torch.autograd.grad`, Adam's bias corrections from a step-count
tensor so that one program serves every step), up to float rounding. It applies on CUDA only
(`compile_applies`): on the CPU the steps run eagerly. The differentiable (unrolled) steps always
run eagerly.

`autocast = "bfloat16"` runs the forward passes under `torch.autocast(dtype=torch.bfloat16)`:
convolutions and matrix products in bfloat16, losses and the Adam state in float32. It changes
the numbers, so it is hashed into run keys when on. It runs on the reference layers.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, vmap

from ..optim import AdamState, Params, adam_step_t
from . import AUTOCAST, COMPILE_MODES  # noqa: F401


def autocast_context(autocast: str, device_type: str) -> contextlib.AbstractContextManager:
    """torch.autocast in bfloat16 when autocast is "bfloat16", else a context that does nothing."""
    if autocast == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def compile_applies(mode: str, device: str | torch.device) -> bool:
    """Whether compile_steps = mode compiles anything on device (CUDA only)."""
    return mode != "none" and torch.device(device).type == "cuda"


def widened(t: Tensor) -> Tensor:
    """t in float32 when autocast made it bfloat16, else t unchanged (float64 stays float64)."""
    return t.float() if t.dtype == torch.bfloat16 else t


def soft_ce(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy against probability-vector targets (bfloat16 logits widened), averaged over the batch."""
    return -(target * torch.log_softmax(widened(logits), dim=-1)).sum(-1).mean()


def _compile(fn: Callable, mode: str, backend: str) -> Callable:
    """torch.compile(fn) in the given mode; a backend other than inductor (tests: "eager") takes no mode."""
    if backend != "inductor":
        return torch.compile(fn, backend=backend, dynamic=False)
    return torch.compile(fn, mode=None if mode == "default" else mode, dynamic=False)


def _step_count(step: int, device: torch.device) -> Tensor:
    """The Adam step count t = step + 1 as a 0-d float64 tensor on device."""
    return torch.full((), float(step + 1), dtype=torch.float64, device=device)


def plain_step(model: nn.Module, lr: float, autocast: str = "none", mode: str = "default",
               backend: str = "inductor") -> Callable[[Params, AdamState, Tensor, Tensor], tuple[Params, AdamState]]:
    """A compiled plain inner step (params, state, x, y) -> (params, state): soft-label loss, gradient, Adam; no graph kept."""
    def loss_fn(p: Params, x: Tensor, y: Tensor) -> Tensor:
        with autocast_context(autocast, x.device.type):
            logits = functional_call(model, p, (x,))
        return soft_ce(logits, y)

    def step(p: Params, m: Params, v: Params, t: Tensor, x: Tensor, y: Tensor):
        return adam_step_t(p, grad(loss_fn)(p, x, y), m, v, t, lr)

    compiled = _compile(step, mode, backend)
    graphs = mode == "reduce-overhead" and backend == "inductor"

    def run(params: Params, state: AdamState, x: Tensor, y: Tensor) -> tuple[Params, AdamState]:
        with torch.no_grad():
            p = {k: t.detach() for k, t in params.items()}
            if graphs:  # outputs of one replay are inputs of the next: mark the step, keep copies
                torch.compiler.cudagraph_mark_step_begin()
            out = compiled(p, state.m, state.v, _step_count(state.step, x.device), x, y)
            if graphs:
                out = tuple({k: t.clone() for k, t in d.items()} for d in out)
        new_p, m, v = out
        return new_p, AdamState(m, v, state.step + 1)

    return run


def vmapped_step(base: nn.Module, lr: float, autocast: str = "none", mode: str = "default",
                 backend: str = "inductor") -> Callable:
    """A compiled evaluation step of K stacked models: (params, buffers, state, xb, yb) -> (params, state, losses)."""
    def loss_one(p: Params, b: Params, x: Tensor, y: Tensor) -> Tensor:
        with autocast_context(autocast, x.device.type):
            logits = functional_call(base, (p, b), (x,))
        return soft_ce(logits, y)

    def step(p: Params, b: Params, m: Params, v: Params, t: Tensor, xb: Tensor, yb: Tensor):
        grads, loss = vmap(grad_and_value(loss_one))(p, b, xb, yb)
        return (*adam_step_t(p, grads, m, v, t, lr), loss)

    compiled = _compile(step, mode, backend)
    graphs = mode == "reduce-overhead" and backend == "inductor"

    def run(params: Params, buffers: Params, state: AdamState, xb: Tensor, yb: Tensor):
        with torch.no_grad():
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            p, m, v, loss = compiled(params, buffers, state.m, state.v, _step_count(state.step, xb.device), xb, yb)
            if graphs:
                p, m, v = ({k: t.clone() for k, t in d.items()} for d in (p, m, v))
                loss = loss.clone()
        return p, AdamState(m, v, state.step + 1), loss

    return run
