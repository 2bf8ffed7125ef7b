"""Functional Adam: the inner optimiser of RaT-BPTT, differentiable through its own update.

Same arithmetic as `torch.optim.Adam` (no weight decay, no amsgrad):
    m_t = b1 m_{t-1} + (1 - b1) g_t          v_t = b2 v_{t-1} + (1 - b2) g_t^2
    p_t = p_{t-1} - lr / (1 - b1^t) * m_t / (sqrt(v_t) / sqrt(1 - b2^t) + eps)
Parameters and moments are dicts of tensors keyed like `module.named_parameters()`, so the
update works on one network or on K stacked networks (a leading model axis) alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

Params = dict[str, Tensor]

# sqrt'(0) is infinite; clamping v at a tiny value keeps the double backward finite where a
# gradient is exactly zero. The value changes by at most 1e-15, far below eps = 1e-8.
_TINY = 1e-30


@dataclass
class AdamState:
    """First and second moments and the step count of a functional Adam."""

    m: Params
    v: Params
    step: int = 0


def adam_init(params: Params) -> AdamState:
    """Zero moments shaped like params."""
    return AdamState(
        m={k: torch.zeros_like(p) for k, p in params.items()},
        v={k: torch.zeros_like(p) for k, p in params.items()},
        step=0,
    )


def _update(params: Params, grads: Params, m: Params, v: Params, step_size: float | Tensor,
            bc2_sqrt: float | Tensor, betas: tuple[float, float], eps: float) -> tuple[Params, Params, Params]:
    """The per-tensor Adam update given the bias corrections: (new params, new m, new v)."""
    b1, b2 = betas
    new_p, new_m, new_v = {}, {}, {}
    for k, p in params.items():
        g = grads[k]
        mk = m[k] * b1 + g * (1 - b1)
        vk = v[k] * b2 + g * g * (1 - b2)
        ss, bc = (x.to(p.dtype) if isinstance(x, Tensor) else x for x in (step_size, bc2_sqrt))
        new_p[k] = p - ss * mk / (vk.clamp_min(_TINY).sqrt() / bc + eps)
        new_m[k], new_v[k] = mk, vk
    return new_p, new_m, new_v


def adam_step(
    params: Params,
    grads: Params,
    state: AdamState,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[Params, AdamState]:
    """One Adam update; differentiable w.r.t. params and grads when they carry a graph."""
    t = state.step + 1
    new_p, new_m, new_v = _update(params, grads, state.m, state.v, lr / (1 - betas[0] ** t),
                                  math.sqrt(1 - betas[1] ** t), betas, eps)
    return new_p, AdamState(new_m, new_v, t)


def adam_step_t(
    params: Params,
    grads: Params,
    m: Params,
    v: Params,
    t: Tensor,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[Params, Params, Params]:
    """`adam_step` with the new step count t as a 0-d float64 tensor: one compiled program serves every step."""
    return _update(params, grads, m, v, lr / (1 - betas[0] ** t), torch.sqrt(1 - betas[1] ** t), betas, eps)


def detach_state(state: AdamState) -> AdamState:
    """Cut the graph of the moments (after the plain, non-differentiable steps)."""
    return AdamState(
        {k: t.detach() for k, t in state.m.items()},
        {k: t.detach() for k, t in state.v.items()},
        state.step,
    )
