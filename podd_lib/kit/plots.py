"""The notebooks' figures (matplotlib), saved as PNG and PDF under out_dir/figures by `save_figure`.

Each plot function takes a table from `kit.tables` (or a run's tensors) and returns the figure;
pictures of posters themselves are in `podd_lib.viz`, which the method uses for poster.png.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import PoddError
from ..io import atomic_savefig
from . import paper


def _plt():
    """matplotlib.pyplot (imported late)."""
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, out_dir: str | os.PathLike, name: str) -> list[Path]:
    """Write out_dir/figures/name.png and name.pdf atomically; returns both paths."""
    if not name or "/" in name or "\\" in name:
        raise PoddError(f"figure name must be a plain file name, got {name!r}")
    folder = Path(out_dir) / "figures"
    return [atomic_savefig(fig, folder / f"{name}.{ext}", dpi=150, bbox_inches="tight") for ext in ("png", "pdf")]


def show_figure(fig: Any, out_dir: str | os.PathLike, name: str) -> None:
    """save_figure, then display the saved PNG in the notebook and close the figure.

    The PNG is shown from its bytes, so this works whatever matplotlib backend is active (viz.poster_figure
    switches to Agg, which stops the notebook's inline rendering of figures).
    """
    paths = save_figure(fig, out_dir, name)
    _plt().close(fig)
    try:
        from IPython.display import Image, display
    except ImportError:  # not in IPython: the files are enough
        return
    display(Image(data=paths[0].read_bytes(), format="png"))


def accuracy_vs_ipc_plot(df: Any, dataset: str):
    """Accuracy against IPC: ours and the paper's PoDD curve, with the RaT-BPTT 1-IPC lines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    pod = df[df["method"] == "PoDD"].sort_values("IPC")
    ax.plot(pod["IPC"], pod["paper_mean"], "o-", color="tab:blue", label="PoDD, paper")
    mine = pod[pod["ours_mean"].notna()]
    if len(mine):
        ax.errorbar(mine["IPC"], mine["ours_mean"], yerr=mine["ours_std"].fillna(0), fmt="s--", color="tab:orange",
                    capsize=3, label=f"PoDD, ours ({', '.join(sorted(set(mine['profile'])))})")
    rat = df[df["method"].str.startswith("RaT-BPTT")]
    if len(rat) and rat["paper_mean"].notna().any():
        ax.axhline(float(rat["paper_mean"].iloc[0]), color="tab:blue", ls=":", lw=1,
                   label="RaT-BPTT 1 IPC, paper")
    if len(rat) and rat["ours_mean"].notna().any():
        ax.axhline(float(rat["ours_mean"].iloc[0]), color="tab:orange", ls=":", lw=1,
                   label="RaT-BPTT 1 IPC (tiling), ours")
    ax.set_xlabel("images per class (IPC)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset}: accuracy vs IPC (paper Table 1)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def figure6_plot(df: Any):
    """Accuracy against the number of patches (paper figure 6), ours beside the paper's."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    d = df.sort_values("patches")
    known = d[d["paper_mean"].notna()]
    ax.plot(known["patches"], known["paper_mean"], "o-", color="tab:blue", label="paper (500 steps)")
    mine = d[d["ours_mean"].notna()]
    if len(mine):
        ax.errorbar(mine["patches"], mine["ours_mean"], yerr=mine["ours_std"].fillna(0), fmt="s--",
                    color="tab:orange", capsize=3, label=f"ours ({', '.join(sorted(set(mine['profile'])))})")
    for _, r in known.iterrows():
        ax.annotate(r["patch_grid"], (r["patches"], r["paper_mean"]), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=7)
    ax.set_xscale("log")
    ax.set_xticks(list(d["patches"]))
    ax.set_xticklabels([str(p) for p in d["patches"]], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("number of patches p (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("CIFAR-10, 1 IPC: accuracy vs patch count (paper figure 6)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def order_scatter(df: Any, corr: float, paper_corr: float = paper.ORDER_CORRELATION):
    """Ordering score against accuracy, one point per class order, with our and the paper's correlation."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    ax.errorbar(df["score"], df["ours_mean"], yerr=df["ours_std"].fillna(0), fmt="o", color="tab:orange", capsize=3)
    for _, r in df.iterrows():
        ax.annotate(str(r["order"]), (r["score"], r["ours_mean"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(5))
    dist = str(df["distance"].iloc[0]) if "distance" in df and len(df) else "class"
    ax.set_xlabel(f"ordering score (1 / summed {dist} distance of neighbours)")
    ax.set_ylabel("test accuracy (%)")
    r_txt = "n/a" if corr != corr else f"{corr:.2f}"
    ax.set_title(f"class order ablation: Pearson r = {r_txt} (paper: {paper_corr:.2f})", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def loss_curve_plot(metrics: Any, title: str = "distillation loss"):
    """Outer loss (and poster gradient norm) per distillation step, from a run's metrics.csv."""
    import pandas as pd

    plt = _plt()
    m = pd.read_csv(metrics) if isinstance(metrics, (str, os.PathLike)) else metrics
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(m["step"], m["loss"], "o-" if len(m) < 30 else "-", color="tab:blue", label="loss on real batch")
    ax.set_xlabel("outer step")
    ax.set_ylabel("loss")
    if "grad_norm" in m:
        ax2 = ax.twinx()
        ax2.plot(m["step"], m["grad_norm"], "--", color="tab:gray", alpha=0.7, label="poster grad norm")
        ax2.set_ylabel("grad norm", color="tab:gray")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def patch_label_grid(y: Any, p_x: int, p_y: int):
    """(p_y, p_x) arrays of the argmax class and its probability of x-major patch labels (p, n)."""
    import torch

    y = torch.as_tensor(y).detach().float().cpu()
    if y.ndim != 2 or y.shape[0] != p_x * p_y:
        raise PoddError(f"patch labels must be ({p_x * p_y}, n), got {tuple(y.shape)}")
    top, cls = y.max(dim=1)
    # patch k = i * p_y + j sits at column i, row j
    return cls.reshape(p_x, p_y).T.numpy(), top.reshape(p_x, p_y).T.numpy()


def label_map_plot(y: Any, geom: Any, classes: Sequence[str], title: str | None = None):
    """The label map: each patch's most likely class drawn on the patch grid, shaded by its probability."""
    import numpy as np

    plt = _plt()
    cls, top = patch_label_grid(y, geom.p_x, geom.p_y)
    n = len(classes)
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20", max(n, 2))
    rgba = cmap(cls % cmap.N)
    rgba[..., 3] = 0.35 + 0.65 * np.clip(top, 0, 1)
    fig, ax = plt.subplots(figsize=(8, 8 * geom.p_y / geom.p_x + 0.8))
    ax.imshow(rgba, interpolation="nearest")
    if geom.p_x * geom.p_y <= 400:
        for j in range(geom.p_y):
            for i in range(geom.p_x):
                ax.text(i, j, str(classes[cls[j, i]])[:5], ha="center", va="center", fontsize=6)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"label map: argmax of each patch's label ({geom.p_x}x{geom.p_y} patches; "
                 "shade = its probability)", fontsize=9)
    fig.tight_layout()
    return fig


def label_tensor_plot(Y: Any, classes: Sequence[str], title: str | None = None):
    """A learned label tensor Y (n, l_h, l_w): the top class of every cell and its share of the cell's mass."""
    import torch

    plt = _plt()
    Y = torch.as_tensor(Y).detach().float().cpu().clamp_min(0)
    if Y.ndim != 3 or Y.shape[0] != len(classes):
        raise PoddError(f"Y must be ({len(classes)}, l_h, l_w), got {tuple(Y.shape)}")
    share = Y / Y.sum(0, keepdim=True).clamp_min(1e-12)
    top, cls = share.max(0)
    n, l_h, l_w = Y.shape
    fig, ax = plt.subplots(figsize=(max(3.0, 1.3 * l_w), max(1.5, 1.0 * l_h + 0.6)))
    ax.imshow(top.numpy(), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    for r in range(l_h):
        for c in range(l_w):
            ax.text(c, r, f"{classes[int(cls[r, c])]}\n{float(top[r, c]):.2f}", ha="center", va="center",
                    fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"learned labels Y ({l_h}x{l_w} cells): top class and its share", fontsize=9)
    fig.tight_layout()
    return fig


def table2_plot(df: Any, dataset: str):
    """Horizontal bars: every method's accuracy at 1 IPC, the paper's and ours."""
    import numpy as np

    plt = _plt()
    d = df.iloc[::-1].reset_index(drop=True)
    y = np.arange(len(d))
    fig, ax = plt.subplots(figsize=(7.0, 0.38 * len(d) + 1.2))
    ax.barh(y + 0.2, d["paper_mean"].fillna(0), height=0.38, color="tab:blue", label="paper")
    ax.barh(y - 0.2, d["ours_mean"].fillna(0), height=0.38, xerr=d["ours_std"].fillna(0), color="tab:orange",
            label="ours")
    ax.set_yticks(y)
    ax.set_yticklabels(d["method"], fontsize=8)
    ax.set_xlabel("test accuracy (%)")
    ax.set_title(f"{dataset}, 1 IPC (paper Table 2)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def class_areas_plot(poster: Any, geom: Any, order: Sequence[Sequence[int]], classes: Sequence[str],
                     preprocess: Any = None, title: str | None = None):
    """The poster cut along its class grid: one panel per class area, named (paper figure 8's reading)."""
    from ..viz import poster_to_image

    plt = _plt()
    img = poster_to_image(poster, geom, preprocess).numpy()
    ch, cw = geom.d_h / geom.o_y, geom.d_w / geom.o_x
    fig, axes = plt.subplots(geom.o_y, geom.o_x, figsize=(1.6 * geom.o_x, 1.7 * geom.o_y), squeeze=False)
    for r, row in enumerate(order):
        for c, k in enumerate(row):
            y0, y1 = int(round(r * ch)), int(round((r + 1) * ch))
            x0, x1 = int(round(c * cw)), int(round((c + 1) * cw))
            ax = axes[r][c]
            area = img[y0:y1, x0:x1]
            ax.imshow(area if area.shape[2] == 3 else area[..., 0], cmap=None if area.shape[2] == 3 else "gray",
                      interpolation="nearest")
            ax.set_title(str(classes[k]), fontsize=8)
            ax.set_axis_off()
    fig.suptitle(title or "class areas of the poster", fontsize=10)
    fig.tight_layout()
    return fig


def class_grid_plot(names: Sequence[Sequence[str]], title: str, fontsize: float = 8):
    """A class ordering as a table of names (rows top to bottom), like paper figures 7 and 8."""
    plt = _plt()
    o_y, o_x = len(names), len(names[0])
    fig, ax = plt.subplots(figsize=(max(4.0, 1.25 * o_x), max(1.2, 0.5 * o_y + 0.6)))
    for r, row in enumerate(names):
        for c, name in enumerate(row):
            ax.add_patch(plt.Rectangle((c, r), 1, 1, fill=(r + c) % 2 == 0, fc="#eef3fb", ec="#888", lw=0.6))
            ax.text(c + 0.5, r + 0.5, str(name).replace("_", " "), ha="center", va="center", fontsize=fontsize)
    ax.set_xlim(0, o_x)
    ax.set_ylim(o_y, 0)
    ax.set_aspect("equal" if o_x > 6 else "auto")
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def traversal_plot(cells_by_style: Mapping[str, Sequence[tuple[int, int]]], o_y: int, o_x: int):
    """The PoCO grid walks: the visiting rank in every cell and arrows between consecutive cells."""
    plt = _plt()
    k = len(cells_by_style)
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k * max(1.0, o_x / max(o_y, 1)) / 2 + 1, 0.9 * o_y + 1.2),
                             squeeze=False)
    for ax, (style, cells) in zip(axes[0], cells_by_style.items()):
        for rank, (r, c) in enumerate(cells):
            ax.add_patch(plt.Rectangle((c, r), 1, 1, fill=False, ec="#888", lw=0.6))
            ax.text(c + 0.5, r + 0.5, str(rank), ha="center", va="center", fontsize=9)
        for (r0, c0), (r1, c1) in zip(cells[:-1], cells[1:]):
            ax.annotate("", xy=(c1 + 0.5, r1 + 0.5), xytext=(c0 + 0.5, r0 + 0.5),
                        arrowprops=dict(arrowstyle="->", color="tab:red", alpha=0.6, lw=0.8))
        ax.set_xlim(0, o_x)
        ax.set_ylim(o_y, 0)
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.set_title(f"{style} walk ({o_y}x{o_x})", fontsize=9)
    fig.tight_layout()
    return fig



def algorithms_plot(df: Any):
    """Bars: accuracy per algorithm, tiling vs poster, random vs DREAM batches."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    algos = list(dict.fromkeys(df["algorithm"]))
    combos = [("tiling", "random"), ("poster", "random"), ("tiling", "dream"), ("poster", "dream")]
    width = 0.8 / len(combos)
    for j, (rep, samp) in enumerate(combos):
        xs, ys, es = [], [], []
        for i, a in enumerate(algos):
            sel = df[(df["algorithm"] == a) & (df["synthetic set"] == rep) & (df["real batches"] == samp)]
            if len(sel) and sel["ours_mean"].iloc[0] is not None:
                xs.append(i + (j - 1.5) * width)
                ys.append(sel["ours_mean"].iloc[0])
                es.append(sel["ours_std"].iloc[0] or 0)
        if xs:
            ax.bar(xs, ys, width, yerr=es, label=f"{rep}, {samp} batches", capsize=2)
    ax.set_xticks(range(len(algos)), algos)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("CIFAR-10, 1 IPC: algorithms on the tiling and on the poster")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def cross_arch_plot(df: Any, title: str = "CIFAR-10: the same sets on other architectures"):
    """Bars: accuracy per architecture, one bar per set (poster, tiling, floor poster, random real)."""
    plt = _plt()
    archs = list(dict.fromkeys(df["architecture"]))
    reps = list(dict.fromkeys(df["representation"]))
    width = 0.8 / len(reps)
    fig, ax = plt.subplots(figsize=(1.9 * len(archs) + 2.5, 3.6))
    for j, rep in enumerate(reps):
        xs, ys, es = [], [], []
        for i, a in enumerate(archs):
            sel = df[(df["architecture"] == a) & (df["representation"] == rep)]
            if len(sel) and sel["ours_mean"].iloc[0] is not None:
                xs.append(i + (j - (len(reps) - 1) / 2) * width)
                ys.append(sel["ours_mean"].iloc[0])
                es.append(sel["ours_std"].iloc[0] or 0)
        ax.bar(xs, ys, width, yerr=es, label=rep, capsize=2)
    ax.set_xticks(range(len(archs)), archs)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
