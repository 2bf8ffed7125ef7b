"""Section 4.3 of the paper: PoDDL, Poster Dataset Distillation Labeling.

Every patch gets a soft label (a probability vector over the n classes).

Fixed labels: upsample the class grid O (o_y x o_x) to the poster (nearest neighbour), count the
pixels of each class inside the patch window; the majority class takes the label, ties share it
(the text). The release takes a softmax of the pixel counts instead, and offers the counts'
proportions; `fixed_labels_form` picks one of the three.

Learned labels: a tensor Y of shape (n, l_h, l_w), initialised one-hot from O. A patch's label
is the window of Y under it, scaled by l/d (window max(1, floor(patch * l / d)), offsets by the
same linspace rule over Y), summed over space and L1-normalised. After each outer step Y is
clipped at 0. The paper sizes Y like the class grid (l_h, l_w) = (o_y, o_x): as many label
parameters as one soft label per class at 1 IPC. The release's sizing is offered as an option.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import PoddError
from .poster import PosterGeometry, extract_windows, linspace_offsets, patch_offsets


# ----------------------------------------------------------------------------- class maps


def class_map(order: list[list[int]], height: int, width: int) -> Tensor:
    """Nearest-neighbour upsampling of the (o_y, o_x) class grid to (height, width) class indices."""
    grid = torch.tensor(order, dtype=torch.long)
    o_y, o_x = grid.shape
    rows = (torch.arange(height) * o_y) // height
    cols = (torch.arange(width) * o_x) // width
    return grid[rows[:, None], cols[None, :]]


def one_hot_map(order: list[list[int]], n_classes: int, height: int, width: int) -> Tensor:
    """(n, height, width) one-hot version of class_map."""
    cm = class_map(order, height, width)
    return torch.nn.functional.one_hot(cm, n_classes).permute(2, 0, 1).float()


# ----------------------------------------------------------------------------- fixed labels


def majority_labels(counts: Tensor) -> Tensor:
    """Rows of class counts -> one-hot of the majority class; ties share the label equally."""
    top = counts == counts.max(dim=1, keepdim=True).values
    return top.float() / top.sum(dim=1, keepdim=True)


FIXED_LABEL_FORMS = ("majority", "softmax", "proportional")


def labels_from_counts(counts: Tensor, form: str = "majority") -> Tensor:
    """Rows of class pixel counts -> labels: the majority one-hot (text), their softmax (release), or their proportions."""
    if form == "majority":
        return majority_labels(counts)
    if form == "softmax":
        return torch.softmax(counts, dim=1)
    if form == "proportional":
        return counts / counts.sum(dim=1, keepdim=True)
    raise PoddError(f"fixed_labels_form must be one of {', '.join(FIXED_LABEL_FORMS)}, got {form!r}")


def fixed_labels(order: list[list[int]], geom: PosterGeometry, form: str = "majority") -> Tensor:
    """(p, n) fixed soft labels of all patches, x-major like the patches."""
    onehot = one_hot_map(order, geom.n_classes, geom.d_h, geom.d_w)
    oy, ox = patch_offsets(geom)
    counts = extract_windows(onehot, oy, ox, geom.h, geom.w).sum((2, 3))  # (p, n)
    return labels_from_counts(counts, form)


# ----------------------------------------------------------------------------- learned labels


def label_grid_size(geom: PosterGeometry, sizing: str = "paper", comp_ipc: float = 1.0) -> tuple[int, int]:
    """(l_h, l_w) of the learned label tensor Y.

    'paper': the class grid, (o_y, o_x). 'release': the largest floor/ceil grid at the poster's
    aspect ratio with strictly fewer than n * comp_ipc cells (CIFAR-10 at 0.9 IPC: 1x6).
    """
    if sizing == "paper":
        return geom.o_y, geom.o_x
    if sizing != "release":
        raise PoddError(f"unknown label sizing {sizing!r}; use 'paper' or 'release'")
    cells = geom.n_classes * comp_ipc
    shrink = 1 / math.sqrt(geom.pixels / cells)
    s_h, s_w = geom.d_h * shrink, geom.d_w * shrink
    cands = [(a, b) for a in (math.ceil(s_h), math.floor(s_h)) for b in (math.ceil(s_w), math.floor(s_w))]
    fewer = [ab for ab in cands if 1 <= ab[0] and 1 <= ab[1] and ab[0] * ab[1] < cells]
    if fewer:  # the grid closest to, and strictly below, n * comp_ipc cells
        return min(fewer, key=lambda ab: cells - ab[0] * ab[1])
    a, b = max(1, math.floor(s_h)), max(1, math.floor(s_w))
    while a * b >= cells and (a > 1 or b > 1):  # e.g. a square CIFAR-100 poster: 10x10 -> 10x9
        a, b = (a - 1, b) if a > b else (a, b - 1)
    return a, b


def init_label_tensor(order: list[list[int]], n_classes: int, l_h: int, l_w: int) -> Tensor:
    """Y initialised one-hot from the class grid, (n, l_h, l_w)."""
    return one_hot_map(order, n_classes, l_h, l_w)


def label_windows(geom: PosterGeometry, l_h: int, l_w: int) -> tuple[Tensor, Tensor, int, int]:
    """(oy, ox, win_h, win_w): every patch's window over Y, x-major like the patches."""
    win_h = max(1, math.floor(geom.h * l_h / geom.d_h))
    win_w = max(1, math.floor(geom.w * l_w / geom.d_w))
    xs = torch.tensor(linspace_offsets(l_w, win_w, geom.p_x), dtype=torch.long)
    ys = torch.tensor(linspace_offsets(l_h, win_h, geom.p_y), dtype=torch.long)
    return ys.repeat(geom.p_x), xs.repeat_interleave(geom.p_y), win_h, win_w


def pooled_labels(Y: Tensor, oy: Tensor, ox: Tensor, win_h: int, win_w: int) -> Tensor:
    """(B, n) soft labels: sum Y over each window, then L1-normalise."""
    s = extract_windows(Y, oy, ox, win_h, win_w).sum((2, 3))
    return s / s.abs().sum(dim=1, keepdim=True).clamp_min(1e-12)


class PosterLabels:
    """A poster's labels: fixed (a constant (p, n) table) or learned (Y and its windows)."""

    def __init__(self, order: list[list[int]], geom: PosterGeometry, learned: bool, sizing: str = "paper",
                 fixed_form: str = "majority"):
        self.learned = learned
        self.sizing = sizing
        self.fixed_form = fixed_form
        if learned:
            l_h, l_w = label_grid_size(geom, sizing)
            self.Y = init_label_tensor(order, geom.n_classes, l_h, l_w)
            self.oy, self.ox, self.win_h, self.win_w = label_windows(geom, l_h, l_w)
            self.table = None
        else:
            self.Y = None
            self.table = fixed_labels(order, geom, fixed_form)

    @classmethod
    def per_class(cls, n_classes: int, geom: PosterGeometry) -> "PosterLabels":
        """Fixed one-hot labels of K = n_classes per-class posters: poster k's p patches are class k."""
        self = cls.__new__(cls)
        self.learned, self.sizing, self.fixed_form, self.Y = False, "per_class", "majority", None
        self.table = torch.eye(n_classes).repeat_interleave(geom.n_patches, dim=0)
        return self

    def __call__(self, Y: Tensor | None = None, idx: Tensor | None = None) -> Tensor:
        """(B, n) labels of the patches at idx (all when None); Y overrides the stored tensor."""
        if not self.learned:
            return self.table if idx is None else self.table[idx]
        Y = self.Y if Y is None else Y
        oy, ox = (self.oy, self.ox) if idx is None else (self.oy[idx], self.ox[idx])
        return pooled_labels(Y, oy.to(Y.device), ox.to(Y.device), self.win_h, self.win_w)

    def describe(self) -> dict:
        """JSON-ready label parameters."""
        if not self.learned:
            return {"labels": "fixed", "form": self.fixed_form, "parameters": 0}
        n, l_h, l_w = self.Y.shape
        return {
            "labels": "learned",
            "sizing": self.sizing,
            "Y_shape": [n, l_h, l_w],
            "parameters": n * l_h * l_w,
            "window": [self.win_h, self.win_w],
        }


def clip_labels_(Y: Tensor) -> Tensor:
    """In place: clip negative label values to zero (after every outer step)."""
    with torch.no_grad():
        return Y.clamp_(min=0)
