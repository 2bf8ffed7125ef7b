"""Pictures of posters: undo the preprocessing, draw the class grid and the patch grid."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .poster import PosterGeometry


def poster_to_image(poster: Tensor, geom: PosterGeometry, preprocess=None) -> Tensor:
    """(C, d_h, d_w) poster -> (d_h, d_w, C) picture in [0, 1] (inverse ZCA / normalisation first)."""
    x = poster.detach().float().cpu()
    if preprocess is not None and hasattr(preprocess, "inverse_poster"):
        x = preprocess.inverse_poster(x, (geom.h, geom.w))
    lo, hi = torch.quantile(x.flatten(), 0.005), torch.quantile(x.flatten(), 0.995)
    x = ((x - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
    return x.permute(1, 2, 0)


def poster_figure(
    poster: Tensor,
    geom: PosterGeometry,
    order: list[list[int]] | None = None,
    classes: list[str] | None = None,
    preprocess=None,
    show_patches: bool = False,
    title: str | None = None,
):
    """A matplotlib figure of the poster with its class grid (and optionally the patch grid)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    img = poster_to_image(poster, geom, preprocess)
    fig, ax = plt.subplots(figsize=(8, 8 * geom.d_h / geom.d_w + 0.8))
    ax.imshow(img.numpy() if img.shape[2] == 3 else img[..., 0].numpy(), interpolation="nearest",
              cmap=None if img.shape[2] == 3 else "gray")
    if order is not None:
        cw, ch = geom.d_w / geom.o_x, geom.d_h / geom.o_y
        for r, row in enumerate(order):
            for c, k in enumerate(row):
                ax.add_patch(Rectangle((c * cw - 0.5, r * ch - 0.5), cw, ch, fill=False, ec="white", lw=1.0, alpha=0.8))
                if classes is not None:
                    ax.text(c * cw + 2, r * ch + 2, classes[k], color="white", fontsize=7, va="top",
                            bbox=dict(fc="black", alpha=0.5, pad=1, lw=0))
    if show_patches:
        for x in geom.xs:
            for y in geom.ys:
                ax.add_patch(Rectangle((x - 0.5, y - 0.5), geom.w, geom.h, fill=False, ec="yellow", lw=0.4, alpha=0.35))
    ax.set_axis_off()
    ax.set_title(title or f"{geom.d_w}x{geom.d_h} poster, {geom.ipc:.3f} IPC, {geom.n_patches} patches", fontsize=9)
    fig.tight_layout()
    return fig


def save_poster_png(path: str | os.PathLike, poster: Tensor, geom: PosterGeometry, order, classes, preprocess=None) -> None:
    """Write the poster picture with its class grid drawn, atomically."""
    import matplotlib.pyplot as plt

    from .io import atomic_savefig

    fig = poster_figure(poster, geom, order, classes, preprocess)
    atomic_savefig(fig, path, dpi=150)
    plt.close(fig)


def per_class_figure(posters: Tensor, geom: PosterGeometry, classes: list[str] | None = None, preprocess=None,
                     title: str | None = None, cols: int = 5):
    """Paper figure 9: K per-class posters (K, C, H, W) side by side, each titled with its class."""
    import math

    import matplotlib.pyplot as plt

    k = posters.shape[0]
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < k:
            img = poster_to_image(posters[i], geom, preprocess)
            ax.imshow(img.numpy() if img.shape[2] == 3 else img[..., 0].numpy(), interpolation="nearest",
                      cmap=None if img.shape[2] == 3 else "gray")
            ax.set_title(classes[i] if classes else f"class {i}", fontsize=8)
    fig.suptitle(title or f"{k} per-class posters, {geom.d_w}x{geom.d_h} each ({geom.ipc:.2f} IPC), "
                 f"{geom.n_patches} patches each", fontsize=9)
    fig.tight_layout()
    return fig


def save_per_class_png(path: str | os.PathLike, posters: Tensor, geom: PosterGeometry, classes, preprocess=None) -> None:
    """Write the per-class posters picture atomically."""
    import matplotlib.pyplot as plt

    from .io import atomic_savefig

    fig = per_class_figure(posters, geom, classes, preprocess)
    atomic_savefig(fig, path, dpi=150)
    plt.close(fig)
