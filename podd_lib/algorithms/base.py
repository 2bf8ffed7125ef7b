"""Algorithm 1's input "distillation algorithm": what every algorithm shares, and the outer step.

    P ~ N(0, 1); O <- PoCO(C); Y <- PoDDL(O, p)
    for each distillation step: P, Y <- ALGORITHM(D, patches and labels of (P, Y))

An algorithm sees the synthetic set only as a `SyntheticSet`: p patches with soft labels, cut
differentiably from a poster. The tiling is a poster whose patches do not overlap, so every
algorithm runs on posters and on ordinary images alike. It sees the real data only through a
`RealSampler` (random batches, or DREAM's representative ones, `podd_lib.algorithms.dream`).

An algorithm is an object with
    name: str
    extra_leaves() -> list[(name, tensor, lr)]   learnable tensors besides poster and Y (MTT's step size)
    meta_loss(syn, real, gen, step) -> (loss, info)   differentiable in poster, Y and the extra leaves
and `outer_step` does the rest the same way for all of them: backpropagate, clip the poster
gradient to 2 x an EMA of its norm, Adam on poster, Y and extras, clip Y at 0 (paper section 4.3).
The original DM/DC/MTT update their images with SGD at method-specific learning rates; sharing
PoDD's outer Adam makes the comparison one of objectives at equal outer steps (notebook 07).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..augment import augment
from ..errors import PoddError
from ..models import seed_from
from ..optim import Params
from ..poddl import PosterLabels, clip_labels_
from ..poster import PosterGeometry, extract_patches, poster_count

Features = Callable[[Tensor], Tensor]


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy against probability-vector targets, averaged over the batch."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def reinit_params(model: nn.Module, gen: torch.Generator) -> Params:
    """A fresh random initialisation of `model`'s parameters, drawn reproducibly from gen."""
    seed = seed_from(gen)
    devices = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for m in model.modules():
            if m is not model and hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return {k: p.detach().clone().requires_grad_(True) for k, p in model.named_parameters()}


@dataclass
class SyntheticSet:
    """The synthetic set as an algorithm sees it: p patches of a poster and their soft labels."""

    poster: Tensor
    Y: Tensor | None
    labels: PosterLabels
    geom: PosterGeometry

    @property
    def n(self) -> int:
        """Number of patches: p, or K * p for K per-class posters."""
        return self.geom.n_patches * poster_count(self.poster)

    def batch(self, idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Patches at idx (all when None) and their (B, n_classes) labels; differentiable."""
        return extract_patches(self.poster, self.geom, idx), self.labels(self.Y, idx)

    def sample(self, bs_d: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """A random batch of min(bs_d, p) distinct patches and their labels."""
        idx = torch.randperm(self.n, generator=gen, device=gen.device)[:bs_d].to(self.poster.device)
        return self.batch(idx)


class RealSampler:
    """Random real batches: over all classes, or within one class (DM and DC match per class)."""

    def __init__(self, x: Tensor, y: Tensor, n_classes: int):
        self.x, self.y, self.n_classes = x, y, n_classes
        self._by_class: list[Tensor] | None = None

    @property
    def by_class(self) -> list[Tensor]:
        """Indices of each class's images (built on first use; a class without images fails)."""
        if self._by_class is None:
            self._by_class = [torch.nonzero(self.y == c).flatten() for c in range(self.n_classes)]
            empty = [c for c, ix in enumerate(self._by_class) if ix.numel() == 0]
            if empty:
                raise PoddError(f"class {empty[0]} has no training images; every class needs at least one")
        return self._by_class

    def batch(self, bs: int, gen: torch.Generator, features: Features | None = None, step: int = 0
              ) -> tuple[Tensor, Tensor]:
        """bs distinct random images (all when bs >= N) and their integer labels."""
        idx = torch.randperm(self.x.shape[0], generator=gen, device=gen.device)[:bs].to(self.x.device)
        return self.x[idx], self.y[idx]

    def class_batch(self, c: int, n: int, gen: torch.Generator, features: Features | None = None,
                    step: int = 0) -> Tensor:
        """n distinct random images of class c (all of them when the class is smaller)."""
        pool = self.by_class[c]
        pick = torch.randperm(pool.numel(), generator=gen, device=gen.device)[:n].to(pool.device)
        return self.x[pool[pick]]


def steps_per_epoch(n_train: int, bs: int) -> int:
    """Outer steps in one epoch: one pass over n_train real images in batches of bs (the last may be short)."""
    return max(1, math.ceil(n_train / bs))


def epoch_generator(seed: int, epoch: int, stream: str) -> torch.Generator:
    """A CPU generator for one epoch's draws, seeded from (seed, stream, epoch) alone: resume needs no state."""
    digest = hashlib.sha256(f"{int(seed)}/{stream}/{int(epoch)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class EpochSampler(RealSampler):
    """The release's real batches: a walk over the training set, reshuffled every epoch.

    Outer step `step` takes the (step mod E)-th batch of bs images of epoch step // E, with
    E = ceil(N / bs), from a permutation drawn by `epoch_generator(seed, epoch, "real")`: every
    image once per epoch, the last batch of an epoch holding the remainder. The run's own
    generator is not consumed, and a resumed run sees the same batches.
    """

    def __init__(self, x: Tensor, y: Tensor, n_classes: int, seed: int):
        super().__init__(x, y, n_classes)
        self.seed = int(seed)
        self._perm: tuple[int, Tensor] | None = None

    def epoch_order(self, epoch: int) -> Tensor:
        """The permutation of the training set that epoch `epoch` walks (kept for the current epoch)."""
        if self._perm is None or self._perm[0] != epoch:
            perm = torch.randperm(self.x.shape[0], generator=epoch_generator(self.seed, epoch, "real"))
            self._perm = (epoch, perm.to(self.x.device))
        return self._perm[1]

    def batch(self, bs: int, gen: torch.Generator, features: Features | None = None, step: int = 0
              ) -> tuple[Tensor, Tensor]:
        """The batch of outer step `step` in the epoch walk (gen is not used)."""
        per_epoch = steps_per_epoch(self.x.shape[0], bs)
        k = step % per_epoch
        idx = self.epoch_order(step // per_epoch)[k * bs:(k + 1) * bs]
        return self.x[idx], self.y[idx]


class Algorithm(Protocol):
    """What `outer_step` needs of a distillation algorithm."""

    name: str

    def extra_leaves(self) -> list[tuple[str, Tensor, float]]: ...

    def meta_loss(self, syn: SyntheticSet, real: RealSampler, gen: torch.Generator, step: int
                  ) -> tuple[Tensor, dict]: ...


@dataclass
class ClassMatchSettings:
    """DM's and DC's knobs: real images per class per step (both: 256), patch batch, augmentation."""

    real_per_class: int = 256
    bs_d: int = 96
    aug: str = "flip_rotate"


class PosterOnly:
    """Mixin of the algorithms that learn nothing besides poster and Y (all but MTT)."""

    def extra_leaves(self) -> list[tuple[str, Tensor, float]]:
        """No learnable tensors of the algorithm's own."""
        return []


class ClassMatching(PosterOnly):
    """Base of the per-class matching algorithms (DM, DC): a network and its settings."""

    name = "class-matching"

    def __init__(self, model: nn.Module, s: ClassMatchSettings):
        self.model, self.s = model, s


def embed(model: nn.Module, params: dict[str, Tensor], x: Tensor) -> Tensor:
    """The network's features before its classifier, under params (DM, DREAM)."""
    return functional_call(model, params, (x,), {"embed": True})


def siamese_augment(x: Tensor, strategy: str, seed: int) -> Tensor:
    """Augment with a generator seeded by `seed`, so real and synthetic batches share it (DSA)."""
    g = torch.Generator(device=x.device)
    g.manual_seed(seed)
    return augment(x, strategy, g)


def frozen_features(model: nn.Module, params: dict[str, Tensor]) -> Features:
    """x -> embed(model, params, x) without a graph: what DREAM clusters."""
    def features(x: Tensor) -> Tensor:
        with torch.no_grad():
            return embed(model, params, x)

    return features


@dataclass
class OuterSettings:
    """The outer loop's clipping, shared by every algorithm (paper 4.3 / the release); the Adam lr lives in the optimiser."""

    clip_ema: float = 0.9
    clip_factor: float = 2.0
    clip_order: str = "text"  # "text": clip at 2 x the previous EMA, then update it; "release": update, then clip


@dataclass
class OuterState:
    """What the outer loop carries between steps (and what a checkpoint saves)."""

    poster: Tensor
    Y: Tensor | None
    opt: torch.optim.Adam
    gen: torch.Generator
    ema: float | None = None
    step: int = 0
    history: list[dict] = field(default_factory=list)
    extras: dict[str, Tensor] = field(default_factory=dict)  # an algorithm's own leaves (MTT's step size)


def make_outer_state(
    poster: Tensor, Y: Tensor | None, lr: float, gen: torch.Generator,
    extra_leaves: list[tuple[str, Tensor, float]] = (),
) -> OuterState:
    """Wrap poster and Y as leaves and build the outer Adam (lr, betas 0.9/0.999, eps 1e-8, no decay).

    extra_leaves: (name, tensor, lr) of an algorithm's own learnable tensors, each its own group.
    """
    poster = poster.detach().clone().requires_grad_(True)
    leaves = [poster]
    if Y is not None:
        Y = Y.detach().clone().requires_grad_(True)
        leaves.append(Y)
    groups = [{"params": leaves, "lr": lr}] + [{"params": [t], "lr": t_lr} for _, t, t_lr in extra_leaves]
    opt = torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    return OuterState(poster, Y, opt, gen, extras={name: t for name, t, _ in extra_leaves})


def clip_by_ema(grad: Tensor, ema: float | None, clip_ema: float, clip_factor: float) -> tuple[float, float]:
    """Clip grad in place to clip_factor x EMA of past norms; return (norm before clipping, new EMA)."""
    norm = float(grad.norm())
    if ema is None:
        ema = norm
    limit = clip_factor * ema
    if norm > limit > 0:
        grad.mul_(limit / norm)
    return norm, clip_ema * ema + (1 - clip_ema) * norm


def clip_by_updated_ema(grad: Tensor, ema: float | None, clip_ema: float, clip_factor: float
                        ) -> tuple[float, float]:
    """The release's order: fold the norm into the EMA, then clip grad in place to clip_factor x it; (norm, EMA)."""
    norm = float(grad.norm())
    ema = norm if ema is None else clip_ema * ema + (1 - clip_ema) * norm
    limit = clip_factor * ema
    if norm > limit > 0:
        grad.mul_(limit / norm)
    return norm, ema


CLIP_ORDERS = {"text": clip_by_ema, "release": clip_by_updated_ema}


def check_finite(loss: Tensor, step: int) -> None:
    """Stop on a NaN or infinite loss, naming the step (the distill loop keeps the last checkpoint)."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {float(loss.detach())} at outer step {step}")


def outer_grads(st: OuterState, loss: Tensor) -> None:
    """Set .grad of the outer leaves (poster, Y, an algorithm's extras) to d loss / d leaf.

    Only those: loss.backward() would also fill the .grad of every other leaf in the graph (the
    inner network's starting weights), work that nothing reads.
    """
    leaves = [p for group in st.opt.param_groups for p in group["params"]]
    for p, g in zip(leaves, torch.autograd.grad(loss, leaves, allow_unused=True)):
        p.grad = g


def apply_outer_update(st: OuterState, loss: Tensor, clip_ema: float, clip_factor: float,
                       clip_order: str = "text") -> float:
    """Backpropagate loss into poster/Y/extras, clip the poster gradient, step Adam, clip Y; returns the norm."""
    st.opt.zero_grad(set_to_none=True)
    outer_grads(st, loss)
    if st.poster.grad is None:
        raise PoddError("the algorithm's loss does not depend on the poster")
    norm, st.ema = CLIP_ORDERS[clip_order](st.poster.grad, st.ema, clip_ema, clip_factor)
    if not math.isfinite(norm):
        raise FloatingPointError(f"non-finite poster gradient at outer step {st.step + 1}")
    st.opt.step()
    if st.Y is not None:
        clip_labels_(st.Y)
    st.step += 1
    return norm


def outer_step(st: OuterState, algo: Algorithm, labels: PosterLabels, geom: PosterGeometry, real: RealSampler,
               outer: OuterSettings) -> dict:
    """One distillation step of any algorithm on the poster (and Y, and the algorithm's extras)."""
    syn = SyntheticSet(st.poster, st.Y, labels, geom)
    loss, info = algo.meta_loss(syn, real, st.gen, st.step)
    check_finite(loss, st.step + 1)
    norm = apply_outer_update(st, loss, outer.clip_ema, outer.clip_factor, outer.clip_order)
    return {"step": st.step, "loss": float(loss.detach()), "grad_norm": norm, **info}
