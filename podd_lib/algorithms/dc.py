"""Gradient matching (DC, Zhao et al. 2021; DSA with siamese augmentation) on poster patches.

Per outer step a freshly initialised network; for each class c the training gradient of a real
batch of class c is matched with the gradient of the patches that carry class c, each patch
weighted by its label mass y_ic and trained on its own soft label:

    g_real_c = grad_theta CE(f(A(x_real_c)), c)
    g_syn_c  = grad_theta sum_i y_ic CE_soft(f(A(x_i)), y_i) / sum_i y_ic
    L_DC     = sum_c sum_layers D(g_real_c, g_syn_c)

D is DC's layer-wise distance: each weight gradient is reshaped to (out, -1) and the distance is
sum_out (1 - cos); bias and norm vectors (1-D) are skipped, as in DC. With one-hot labels this
is DC/DSA at one inner loop, their setting for 1 image per class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..models import seed_from
from .base import (ClassMatching, ClassMatchSettings, RealSampler, SyntheticSet, frozen_features, reinit_params,
                   siamese_augment)

if TYPE_CHECKING:
    from ..config import Config


def layer_distance(g_real: Tensor, g_syn: Tensor) -> Tensor:
    """DC's distance of one parameter's gradients: sum over output units of 1 - cos; 0 for 1-D tensors."""
    if g_real.dim() == 1:
        return g_real.new_zeros(())
    a, b = g_real.flatten(1), g_syn.flatten(1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-6)
    return (1 - cos).sum()


def match_distance(g_real: list[Tensor], g_syn: list[Tensor]) -> Tensor:
    """Sum of layer distances over all parameters."""
    return torch.stack([layer_distance(a, b) for a, b in zip(g_real, g_syn)]).sum()


DCSettings = ClassMatchSettings


class GradientMatching(ClassMatching):
    """DC/DSA as a distillation algorithm over a SyntheticSet."""

    name = "dc"

    def meta_loss(self, syn: SyntheticSet, real: RealSampler, gen: torch.Generator, step: int) -> tuple[Tensor, dict]:
        """A fresh network; per class, real-batch gradients against label-weighted patch gradients."""
        params = reinit_params(self.model, gen)
        names = list(params)
        x, y = syn.sample(self.s.bs_d, gen)
        features = frozen_features(self.model, {k: p.detach() for k, p in params.items()})
        total = x.new_zeros(())
        for c in range(real.n_classes):
            w = y[:, c]
            keep = torch.nonzero(w.detach() > 0).flatten()
            if keep.numel() == 0:
                continue
            seed = seed_from(gen)
            xr = siamese_augment(real.class_batch(c, self.s.real_per_class, gen, features, step), self.s.aug, seed)
            target = torch.full((xr.shape[0],), c, dtype=torch.long, device=xr.device)
            loss_r = F.cross_entropy(functional_call(self.model, params, (xr,)), target)
            g_real = [g.detach() for g in torch.autograd.grad(loss_r, [params[k] for k in names])]
            xs = siamese_augment(x[keep], self.s.aug, seed)
            logits = functional_call(self.model, params, (xs,))
            per_patch = -(y[keep] * F.log_softmax(logits, -1)).sum(-1)
            loss_s = (w[keep] * per_patch).sum() / w[keep].sum()
            g_syn = torch.autograd.grad(loss_s, [params[k] for k in names], create_graph=True)
            total = total + match_distance(g_real, list(g_syn))
        return total, {}



def from_config(cfg: Config, model: nn.Module, s, real=None, device: str = "cpu",
                progress: bool = False) -> GradientMatching:
    """DC with the config's real images per class and the patch batch and augmentation of s."""
    return GradientMatching(model, DCSettings(cfg.real_per_class, s.bs_d, s.syn_aug))
