"""DREAM (Liu et al. 2023): representative matching, and clustering-based initialisation.

Representative matching: inside each class, k-means on the matching network's features splits
the class into N sub-clusters (N = the per-class real batch size); the real image nearest each
sub-cluster centre forms the batch. Clustering is redone every I_int outer steps (DREAM: 10),
with the network of that step; in between, the same representatives are used.

`DreamSampler` is a drop-in `RealSampler`, so it serves RaT-BPTT's real batch (bs / n_classes
representatives per class), DM and DC (their per-class batches) alike.

Clustering-based initialisation: the real image nearest each class's centre, placed in the
class's area of the poster (`poster.init_from_images`, linear cross-fades where areas overlap).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import PoddError
from .base import Features, RealSampler


def kmeans_pp_init(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding: (k, d) initial centres drawn from the rows of x (n, d)."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen, device=gen.device))
    centres = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2.clamp_min(0)
        if float(p.sum()) <= 0:  # all points coincide with chosen centres
            nxt = int(torch.randint(n, (1,), generator=gen, device=gen.device))
        else:
            nxt = int(torch.multinomial((p / p.sum()).to(gen.device), 1, generator=gen))
        centres.append(x[nxt])
        d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(1))
    return torch.stack(centres)


def kmeans(x: Tensor, k: int, gen: torch.Generator, iters: int = 20) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means from k-means++ seeds: (centres (k, d), assignment (n,)); empty clusters keep their centre."""
    if not 1 <= k <= x.shape[0]:
        raise PoddError(f"k-means needs 1 <= k <= number of points, got k={k} for {x.shape[0]} points")
    x = x.float()
    centres = kmeans_pp_init(x, k, gen)
    assign = torch.cdist(x, centres).argmin(1)
    for _ in range(iters):
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        new = torch.cdist(x, centres).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
    return centres, assign


def nearest_to_centres(x: Tensor, centres: Tensor) -> Tensor:
    """(k,) index of the row of x nearest each centre."""
    return torch.cdist(centres.float(), x.float()).argmin(1)


def representatives(features: Tensor, k: int, gen: torch.Generator, iters: int = 20) -> Tensor:
    """DREAM's choice: indices of the k points nearest the k sub-cluster centres (all when k >= n)."""
    n = features.shape[0]
    if k >= n:
        return torch.arange(n, device=features.device)
    centres, _ = kmeans(features.flatten(1), k, gen, iters)
    return nearest_to_centres(features.flatten(1), centres)


def split_evenly(total: int, parts: int) -> list[int]:
    """total split into `parts` near-equal integers, larger first."""
    q, r = divmod(total, parts)
    return [q + (1 if i < r else 0) for i in range(parts)]


class DreamSampler(RealSampler):
    """Real batches of sub-cluster representatives, re-clustered every `interval` outer steps."""

    def __init__(self, x: Tensor, y: Tensor, n_classes: int, interval: int = 10, pool: int = 0, iters: int = 20,
                 feature_bs: int = 1024):
        super().__init__(x, y, n_classes)
        if interval < 1:
            raise PoddError(f"DREAM's clustering interval must be >= 1, got {interval}")
        self.interval, self.pool, self.iters, self.feature_bs = interval, pool, iters, feature_bs
        self.cache: dict[tuple[int, int], tuple[int, Tensor]] = {}
        self.reclusterings = 0

    def _features(self, idx: Tensor, features: Features) -> Tensor:
        """Features of the images at idx, in chunks."""
        return torch.cat([features(self.x[idx[i : i + self.feature_bs]]) for i in range(0, idx.numel(), self.feature_bs)])

    def class_indices(self, c: int, n: int, gen: torch.Generator, features: Features | None, step: int) -> Tensor:
        """Indices (into x) of class c's n representatives for this step's clustering block."""
        if features is None:
            raise PoddError("DREAM sampling needs the matching network's features")
        block = step // self.interval
        hit = self.cache.get((c, n))
        if hit is not None and hit[0] == block:
            return hit[1]
        pool = self.by_class[c]
        if self.pool and pool.numel() > self.pool:
            pool = pool[torch.randperm(pool.numel(), generator=gen, device=gen.device)[: self.pool].to(pool.device)]
        with torch.no_grad():
            feats = self._features(pool, features)
        pick = pool[representatives(feats, n, gen, self.iters).to(pool.device)]
        self.cache[(c, n)] = (block, pick)
        self.reclusterings += 1
        return pick

    def class_batch(self, c: int, n: int, gen: torch.Generator, features: Features | None = None,
                    step: int = 0) -> Tensor:
        """Class c's n representative images."""
        return self.x[self.class_indices(c, n, gen, features, step)]

    def batch(self, bs: int, gen: torch.Generator, features: Features | None = None, step: int = 0
              ) -> tuple[Tensor, Tensor]:
        """bs representatives, split evenly over the classes, and their labels."""
        idx = torch.cat([self.class_indices(c, n, gen, features, step)
                         for c, n in enumerate(split_evenly(bs, self.n_classes)) if n > 0])
        return self.x[idx], self.y[idx]


def class_representatives(x: Tensor, y: Tensor, n_classes: int, features: Features, gen: torch.Generator,
                          iters: int = 20) -> Tensor:
    """DREAM initialisation: per class the image nearest the class centre (k-means, k = 1), (n_classes, C, h, w)."""
    sampler = DreamSampler(x, y, n_classes, iters=iters)
    return torch.stack([sampler.class_batch(c, 1, gen, features, 0)[0] for c in range(n_classes)])
