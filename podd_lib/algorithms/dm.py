"""Distribution matching (DM, Zhao & Bilen 2023) on poster patches.

Per outer step a freshly initialised network psi embeds a real batch of each class and the
synthetic batch. With soft patch labels a patch counts toward class c with weight y_ic, so the
synthetic class mean is the label-weighted mean of the patch embeddings:

    mu_real_c = mean_{x in real_c} psi(A(x))
    mu_syn_c  = sum_i y_ic psi(A(x_i)) / sum_i y_ic
    L_DM      = sum_c || mu_real_c - mu_syn_c ||^2          (classes with no synthetic mass skipped)

With one-hot labels this is DM exactly. Real and synthetic images share the augmentation seed
(DSA's siamese augmentation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..models import seed_from
from .base import (ClassMatching, ClassMatchSettings, RealSampler, SyntheticSet, embed, frozen_features,
                   reinit_params, siamese_augment)

if TYPE_CHECKING:
    from ..config import Config


def weighted_class_means(emb: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """(n_classes, d) label-weighted means of emb (B, d) under weights (B, n_classes), and the masses."""
    mass = weights.sum(0)
    means = weights.t() @ emb / mass.clamp_min(1e-12)[:, None]
    return means, mass


def dm_loss(real_means: Tensor, emb_syn: Tensor, weights: Tensor) -> Tensor:
    """Sum over classes with synthetic mass of ||real mean - weighted synthetic mean||^2."""
    syn_means, mass = weighted_class_means(emb_syn, weights)
    present = mass > 1e-8
    return ((real_means[present] - syn_means[present]) ** 2).sum()


DMSettings = ClassMatchSettings


class DistributionMatching(ClassMatching):
    """DM as a distillation algorithm over a SyntheticSet."""

    name = "dm"

    def meta_loss(self, syn: SyntheticSet, real: RealSampler, gen: torch.Generator, step: int) -> tuple[Tensor, dict]:
        """A fresh network; per-class real means against label-weighted patch means."""
        params = {k: p.detach() for k, p in reinit_params(self.model, gen).items()}
        x, y = syn.sample(self.s.bs_d, gen)
        seed = seed_from(gen)
        emb_syn = embed(self.model, params, siamese_augment(x, self.s.aug, seed))
        features = frozen_features(self.model, params)
        means = []
        with torch.no_grad():
            for c in range(real.n_classes):
                xr = real.class_batch(c, self.s.real_per_class, gen, features, step)
                means.append(embed(self.model, params, siamese_augment(xr, self.s.aug, seed)).mean(0))
        return dm_loss(torch.stack(means), emb_syn, y), {}


def from_config(cfg: Config, model: nn.Module, s, real=None, device: str = "cpu",
                progress: bool = False) -> DistributionMatching:
    """DM with the config's real images per class and the patch batch and augmentation of s."""
    return DistributionMatching(model, DMSettings(cfg.real_per_class, s.bs_d, s.syn_aug))
