"""Section 3 of the paper: RaT-BPTT, the distillation algorithm under the poster.

One outer step (method notes, section 4):
  1. a fresh, randomly initialised network theta_0 and an inner Adam(inner_lr);
  2. curriculum: draw c ~ U[minwindow, totwindow - window]; train c plain steps (no graph) on
     random batches of bs_d patches. c is drawn every outer step (`curriculum_draw = "step"`,
     the paper's text) or once per epoch of ceil(N / bs) outer steps ("epoch", the release's);
  3. unroll `window` more steps differentiably, Adam's update included (its moments and bias
     correction carry the graph), each on a fresh batch of bs_d patches;
  4. loss of the unrolled network on a real batch of bs images; backpropagate to the poster
     (and to the label tensor Y when labels are learned);
  5. outer Adam on poster and Y. The poster gradient is clipped to 2 x an EMA (0.9) of its norm,
     and Y is clipped at 0 after the step.

The inner loop is `torch.func.functional_call` over a dict of parameters updated by the
functional Adam of `podd_lib.optim`, so no module is rebuilt and no `higher` is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..augment import augment
from ..errors import PoddError
from ..fast.compiled import autocast_context, compile_applies, plain_step, widened
from ..optim import AdamState, Params, adam_init, adam_step, detach_state
from ..poddl import PosterLabels
from ..poster import PosterGeometry
from .base import (OuterSettings, OuterState, PosterOnly, RealSampler, SyntheticSet, epoch_generator, frozen_features,
                   reinit_params, soft_cross_entropy, steps_per_epoch)
from .base import outer_step as generic_outer_step

if TYPE_CHECKING:
    from ..config import Config


CURRICULUM_DRAWS = ("step", "epoch")


@dataclass(frozen=True)
class RatBpttSettings:
    """The hyperparameters of one outer step, named as in the paper and the release."""

    window: int  # unrolled, differentiable inner steps (Delta T)
    totwindow: int  # maximal inner steps T
    minwindow: int = 0
    inner_lr: float = 1e-3
    lr: float = 1e-3  # outer Adam, on poster and labels
    bs_d: int = 96  # synthetic (patch) batch size
    bs: int = 5000  # real batch size
    syn_aug: str = "flip_rotate"
    real_aug: str = "flip_rotate"
    clip_ema: float = 0.9  # EMA coefficient of the poster gradient norm
    clip_factor: float = 2.0  # clip the poster gradient to clip_factor x EMA
    fixed_curriculum: int | None = None  # benchmarks only: always c plain steps
    real_chunk: int = 128  # >0: the real batch's gradient in chunks of this many images (same maths, less memory)
    channels_last: bool = True  # run the network on channels-last batches (same maths, other kernels)
    autocast: str = "none"  # "bfloat16": forward passes under torch.autocast (changes the numbers)
    compile_steps: str = "none"  # "default" | "reduce-overhead": the plain steps compiled (CUDA only)
    curriculum_draw: str = "step"  # draw c every outer step ("step") or once per epoch ("epoch", the release)

    def __post_init__(self) -> None:
        """Reject settings that make no curriculum."""
        if self.window < 1 or self.totwindow < self.window or self.minwindow > self.totwindow - self.window:
            raise PoddError(
                f"need 1 <= window <= totwindow and minwindow <= totwindow - window, got "
                f"window={self.window} totwindow={self.totwindow} minwindow={self.minwindow}"
            )
        if self.bs_d < 1 or self.bs < 1:
            raise PoddError(f"batch sizes must be positive, got bs_d={self.bs_d} bs={self.bs}")
        if self.curriculum_draw not in CURRICULUM_DRAWS:
            raise PoddError(f"curriculum_draw must be one of {', '.join(CURRICULUM_DRAWS)}, got {self.curriculum_draw!r}")


def sample_curriculum(s: RatBpttSettings, gen: torch.Generator) -> int:
    """c ~ U[minwindow, totwindow - window]: the plain steps before the unrolled window."""
    if s.fixed_curriculum is not None:
        return s.fixed_curriculum
    hi = s.totwindow - s.window
    return int(torch.randint(s.minwindow, hi + 1, (1,), generator=gen, device=gen.device).item())


def epoch_curriculum(s: RatBpttSettings, seed: int, epoch: int) -> int:
    """The release's draw: one c ~ U[minwindow, totwindow - window] per epoch, from (seed, epoch) alone."""
    if s.fixed_curriculum is not None:
        return s.fixed_curriculum
    return sample_curriculum(s, epoch_generator(seed, epoch, "curriculum"))


def patch_batch(
    poster: Tensor, Y: Tensor | None, labels: PosterLabels, geom: PosterGeometry, bs_d: int, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """A random batch of bs_d distinct patches (all of them when bs_d >= p) and their labels."""
    return SyntheticSet(poster, Y, labels, geom).sample(bs_d, gen)


def inner_steps(
    model: nn.Module,
    params: Params,
    state: AdamState,
    poster: Tensor,
    Y: Tensor | None,
    labels: PosterLabels,
    geom: PosterGeometry,
    s: RatBpttSettings,
    n_steps: int,
    gen: torch.Generator,
    differentiable: bool,
    step_fn=None,
) -> tuple[Params, AdamState]:
    """n_steps of inner Adam on patch batches; with a graph back to poster and Y if differentiable.

    step_fn: a compiled plain step (`fast.compiled.plain_step`) for the steps without a graph.
    """
    compiled = step_fn is not None and not differentiable
    for _ in range(n_steps):
        x, y = patch_batch(poster, Y, labels, geom, s.bs_d, gen)
        if not differentiable:
            x, y = x.detach(), y.detach()
        x = augment(x, s.syn_aug, gen)
        if s.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if compiled:
            params, state = step_fn(params, state, x, y)
            continue
        with autocast_context(s.autocast, x.device.type):
            loss = soft_cross_entropy(widened(functional_call(model, params, (x,))), y)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=differentiable)
        params, state = adam_step(params, dict(zip(params, grads)), state, s.inner_lr)
        if not differentiable:
            params = {k: p.detach().requires_grad_(True) for k, p in params.items()}
            state = detach_state(state)
    if compiled:
        params = {k: p.detach().requires_grad_(True) for k, p in params.items()}
    return params, state


def real_loss_grad_chunked(model: nn.Module, params: Params, x: Tensor, y: Tensor, chunk: int,
                           autocast: str = "none") -> tuple[Tensor, Params]:
    """Mean cross-entropy on (x, y) and its gradient in params, summed over chunks of `chunk` images.

    The real batch's activations then never exist all at once; the outer backward continues from
    these gradients into the unrolled window (a vector-Jacobian product), which is the same
    meta-gradient as backpropagating the whole batch's loss.
    """
    leaf = {k: p.detach().requires_grad_(True) for k, p in params.items()}
    total = x.new_zeros(())
    grads = {k: torch.zeros_like(p) for k, p in leaf.items()}
    for i in range(0, x.shape[0], chunk):
        with autocast_context(autocast, x.device.type):
            logits = functional_call(model, leaf, (x[i : i + chunk],))
        part = F.cross_entropy(widened(logits), y[i : i + chunk], reduction="sum") / x.shape[0]
        for k, g in zip(leaf, torch.autograd.grad(part, list(leaf.values()))):
            grads[k] += g
        total = total + part.detach()
    return total, grads


class RatBptt(PosterOnly):
    """RaT-BPTT as a distillation algorithm (the paper's choice): steps 1-4 of the outer step above."""

    name = "ratbptt"

    def __init__(self, model: nn.Module, s: RatBpttSettings, seed: int = 0):
        self.model, self.s, self.seed = model, s, int(seed)
        self._plain_step = None  # the compiled plain step, built on first use where compile_steps applies

    def plain_step_fn(self, device: torch.device):
        """The compiled plain inner step when compile_steps applies on device, else None (eager steps)."""
        if not compile_applies(self.s.compile_steps, device):
            return None
        if self._plain_step is None:
            self._plain_step = plain_step(self.model, self.s.inner_lr, self.s.autocast, self.s.compile_steps)
        return self._plain_step

    def curriculum(self, real: RealSampler, gen: torch.Generator, step: int) -> int:
        """c for outer step `step` (0-based): a fresh draw from gen, or the draw of the step's epoch."""
        if self.s.curriculum_draw == "epoch":
            return epoch_curriculum(self.s, self.seed, step // steps_per_epoch(real.x.shape[0], self.s.bs))
        return sample_curriculum(self.s, gen)

    def meta_loss(self, syn: SyntheticSet, real: RealSampler, gen: torch.Generator, step: int) -> tuple[Tensor, dict]:
        """Unroll a fresh network on patches (c plain + window differentiable steps); loss on a real batch."""
        s, model = self.s, self.model
        params = reinit_params(model, gen)
        state = adam_init({k: p.detach() for k, p in params.items()})
        c = self.curriculum(real, gen, step)
        params, state = inner_steps(model, params, state, syn.poster, syn.Y, syn.labels, syn.geom, s, c, gen, False,
                                    self.plain_step_fn(syn.poster.device))
        params, state = inner_steps(model, params, state, syn.poster, syn.Y, syn.labels, syn.geom, s, s.window, gen,
                                    True)
        detached = {k: p.detach() for k, p in params.items()}
        xr, yr = real.batch(s.bs, gen, frozen_features(model, detached), step)
        xr = augment(xr, s.real_aug, gen)
        if s.channels_last:
            xr = xr.contiguous(memory_format=torch.channels_last)
        if s.real_chunk and xr.shape[0] > s.real_chunk:
            loss, grads = real_loss_grad_chunked(model, detached, xr, yr, s.real_chunk, s.autocast)
            surrogate = sum((params[k] * grads[k]).sum() for k in params)  # d surrogate / d theta_T = dL / d theta_T
            return surrogate, {"curriculum": c, "loss": float(loss)}
        with autocast_context(s.autocast, xr.device.type):
            logits = functional_call(model, params, (xr,))
        return F.cross_entropy(widened(logits), yr), {"curriculum": c}


def outer_step(
    st: OuterState,
    model: nn.Module,
    labels: PosterLabels,
    geom: PosterGeometry,
    x_train: Tensor,
    y_train: Tensor,
    s: RatBpttSettings,
) -> dict:
    """One RaT-BPTT outer step on the poster (and Y); returns loss, grad norm and curriculum c."""
    real = RealSampler(x_train, y_train, geom.n_classes)
    outer = OuterSettings(clip_ema=s.clip_ema, clip_factor=s.clip_factor)
    return generic_outer_step(st, RatBptt(model, s), labels, geom, real, outer)


def from_config(cfg: Config, model: nn.Module, s: RatBpttSettings, real=None, device: str = "cpu",
                progress: bool = False) -> RatBptt:
    """RaT-BPTT with the config's settings (already read into s); the seed drives per-epoch curriculum draws."""
    return RatBptt(model, s, int(cfg.seed))
