"""The patch explorer: which patch of a poster carries which soft label, over which class areas.

A run (as `load` returns it) is a poster, its geometry, class grid and labels. For one patch k
(x-major, like `poster.extract_patches`) the functions below give its window on the poster, its
crop, its soft label, and the fraction of its pixels in each class area; the figures put them side
by side, with the learned label tensor Y and the patch's window over it when the labels are learned.
Figures are `matplotlib.figure.Figure` objects made without pyplot, so nothing depends on the
active backend; `explorer` wraps `patch_figure` in an ipywidgets slider.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import PoddError
from ..poddl import label_windows, one_hot_map
from ..poster import PosterGeometry, extract_windows, patch_offsets


def load(run_dir: str | os.PathLike, data_root: str | os.PathLike | None = None) -> dict:
    """A finished run for the explorer: `distill.load_run` with the preprocessor rebuilt (data_root: see load_run)."""
    from ..data import Preprocessor
    from ..run import load_run

    run = load_run(run_dir, data_root)
    if run["poster"].ndim != 3:
        raise PoddError(f"{run_dir} holds {run['poster'].shape[0]} per-class posters; the explorer shows one poster")
    run["preprocess"] = Preprocessor.from_state_dict(run["preprocess"]) if run["preprocess"] else None
    return run


def check_patch(geom: PosterGeometry, k: int) -> int:
    """k as an int, or a one-line PoddError when it is not a patch index of geom."""
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < geom.n_patches:
        raise PoddError(f"patch index must be an integer in 0..{geom.n_patches - 1}, got {k!r}")
    return k


def patch_boxes(geom: PosterGeometry) -> Tensor:
    """(p, 4) long tensor of every patch's window (y, x, h, w) on the poster, x-major."""
    oy, ox = patch_offsets(geom)
    size = torch.tensor([geom.h, geom.w]).expand(geom.n_patches, 2)
    return torch.cat([oy[:, None], ox[:, None], size], dim=1)


def class_area_fractions(order: list[list[int]], geom: PosterGeometry) -> Tensor:
    """(p, n): the fraction of each patch's pixels that lie in each class area of the class grid."""
    onehot = one_hot_map(order, geom.n_classes, geom.d_h, geom.d_w)
    oy, ox = patch_offsets(geom)
    return extract_windows(onehot, oy, ox, geom.h, geom.w).mean((2, 3))


def poster_picture(run: dict) -> Tensor:
    """(d_h, d_w, C) picture of the run's poster in [0, 1] (inverse preprocessing, as viz draws it)."""
    from ..viz import poster_to_image

    return poster_to_image(run["poster"], run["geometry"], run["preprocess"])


def patch_info(run: dict, k: int) -> dict:
    """Patch k of a run: its grid place, window, soft label, class areas and (learned) Y window."""
    geom = run["geometry"]
    k = check_patch(geom, k)
    y, x, h, w = patch_boxes(geom)[k].tolist()
    label = run["y"][k].detach().float().cpu()
    info = {
        "index": k, "column": k // geom.p_y, "row": k % geom.p_y, "box": (y, x, h, w),
        "label": label, "areas": class_area_fractions(run["order"], geom)[k],
        "top_class": run["classes"][int(label.argmax())], "top_prob": float(label.max()), "y_window": None,
    }
    if run.get("Y") is not None:
        _, l_h, l_w = run["Y"].shape
        oy, ox, win_h, win_w = label_windows(geom, l_h, l_w)
        info["y_window"] = (int(oy[k]), int(ox[k]), win_h, win_w)
    return info


def describe(info: dict, classes: list[str]) -> str:
    """One line about a patch: place, window, top class, and the class area it mostly covers."""
    y, x, h, w = info["box"]
    area = classes[int(info["areas"].argmax())]
    return (f"patch {info['index']} (column {info['column']}, row {info['row']}): pixels y {y}-{y + h - 1}, "
            f"x {x}-{x + w - 1}; label {info['top_class']} {100 * info['top_prob']:.0f} %; "
            f"{100 * float(info['areas'].max()):.0f} % of it in the {area} area")


def _class_colours(n: int) -> list:
    """n distinct colours, tab10/tab20 first."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    return [cmap(i / max(n - 1, 1)) if n > 20 else cmap(i) for i in range(n)]


def _draw_class_grid(ax: Any, geom: PosterGeometry, order: list[list[int]], classes: list[str]) -> None:
    """White class-area boxes with class names on a poster axis."""
    from matplotlib.patches import Rectangle

    cw, ch = geom.d_w / geom.o_x, geom.d_h / geom.o_y
    for r, row in enumerate(order):
        for c, cls in enumerate(row):
            ax.add_patch(Rectangle((c * cw - 0.5, r * ch - 0.5), cw, ch, fill=False, ec="white", lw=0.8, alpha=0.7))
            ax.text(c * cw + 1.5, r * ch + 1.5, classes[cls], color="white", fontsize=6, va="top",
                    bbox=dict(fc="black", alpha=0.5, pad=1, lw=0))


def _imshow(ax: Any, img: Tensor) -> None:
    """Show an (H, W, C) picture, grey when it has one channel."""
    rgb = img.shape[2] == 3
    ax.imshow(img.numpy() if rgb else img[..., 0].numpy(), cmap=None if rgb else "gray", interpolation="nearest")
    ax.set_axis_off()


def _label_bars(ax: Any, info: dict, classes: list[str]) -> None:
    """Soft label beside the class areas under the patch, one pair of bars per class."""
    n = len(classes)
    pos = torch.arange(n, dtype=torch.float32)
    ax.bar((pos - 0.2).numpy(), info["label"].numpy(), width=0.4, color="tab:blue", label="soft label")
    ax.bar((pos + 0.2).numpy(), info["areas"].numpy(), width=0.4, color="tab:gray", label="class area under the patch")
    ax.set_xticks(pos.numpy(), classes, rotation=60, fontsize=7, ha="right")
    ax.set_ylim(0, 1.05)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7, loc="upper right")


def _label_tensor(ax: Any, run: dict, info: dict) -> None:
    """The learned label tensor Y as its top class per cell (shaded by its share), the patch's window boxed."""
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Rectangle

    Y = run["Y"].detach().float().cpu().clamp_min(0)
    share = Y / Y.sum(0, keepdim=True).clamp_min(1e-12)
    top, prob = share.argmax(0), share.max(0).values
    colours = torch.tensor([to_rgb(c) for c in _class_colours(Y.shape[0])])
    img = 1 - prob[..., None] * (1 - colours[top])  # white (uncertain) to the class colour (certain)
    ax.imshow(img.numpy(), interpolation="nearest")
    if Y.shape[1] * Y.shape[2] <= 64:
        for (r, c), cls in zip(torch.cartesian_prod(torch.arange(Y.shape[1]), torch.arange(Y.shape[2])).tolist(),
                               top.flatten().tolist()):
            ax.text(c, r, run["classes"][cls], ha="center", va="center", fontsize=6)
    wy, wx, wh, ww = info["y_window"]
    ax.add_patch(Rectangle((wx - 0.5, wy - 0.5), ww, wh, fill=False, ec="black", lw=2))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"learned label map Y ({Y.shape[1]}x{Y.shape[2]}): top class per cell;\n"
                 "the patch's label is the boxed cells' sum", fontsize=8)


def patch_figure(run: dict, k: int):
    """Figure: the poster with patch k boxed, its crop, its soft label against its class areas, and Y if learned."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    geom, classes = run["geometry"], run["classes"]
    info = patch_info(run, k)
    y, x, h, w = info["box"]
    learned = info["y_window"] is not None
    fig = Figure(figsize=(10, 6.4 if learned else 5.6), layout="constrained")
    grid = fig.add_gridspec(2, 3, height_ratios=[1.2, 1], width_ratios=[1, 2.2, 1.6 if learned else 0.01])
    ax = fig.add_subplot(grid[0, :])
    pic = poster_picture(run)
    _imshow(ax, pic)
    _draw_class_grid(ax, geom, run["order"], classes)
    ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ec="yellow", lw=2))
    ax.set_title(describe(info, classes), fontsize=8)
    crop_ax = fig.add_subplot(grid[1, 0])
    _imshow(crop_ax, pic[y:y + h, x:x + w])
    crop_ax.set_title(f"patch {k}: {info['top_class']} {100 * info['top_prob']:.0f} %", fontsize=8)
    _label_bars(fig.add_subplot(grid[1, 1]), info, classes)
    if learned:
        _label_tensor(fig.add_subplot(grid[1, 2]), run, info)
    return fig


def spread_patches(geom: PosterGeometry, count: int) -> list[int]:
    """`count` patch indices spread evenly over the poster's patches (first and last included)."""
    count = max(1, min(count, geom.n_patches))
    return torch.linspace(0, geom.n_patches - 1, count).round().long().tolist()


def most_mixed_patch(run: dict) -> int:
    """The patch whose soft label puts the least weight on its top class (the first such patch on ties)."""
    return int(run["y"].max(dim=1).values.argmin())


def gallery_figure(run: dict, patches: list[int] | None = None, count: int = 6, title: str = ""):
    """Static overview: a few patches' crops above their soft labels against their class areas."""
    from matplotlib.figure import Figure

    geom, classes = run["geometry"], run["classes"]
    patches = spread_patches(geom, count) if patches is None else [check_patch(geom, k) for k in patches]
    pic = poster_picture(run)
    fig = Figure(figsize=(2.1 * len(patches), 4.6), layout="constrained")
    axes = fig.subplots(2, len(patches), squeeze=False, height_ratios=[1, 1.1])
    for col, k in enumerate(patches):
        info = patch_info(run, k)
        y, x, h, w = info["box"]
        _imshow(axes[0, col], pic[y:y + h, x:x + w])
        axes[0, col].set_title(f"patch {k} (col {info['column']}, row {info['row']})\n{info['top_class']} "
                               f"{100 * info['top_prob']:.0f} %", fontsize=8)
        _label_bars(axes[1, col], info, classes)
        if col:
            axes[1, col].get_legend().remove()
    kind = "learned" if run.get("Y") is not None else "fixed"
    fig.suptitle(f"{title}{len(patches)} of {geom.n_patches} patches ({kind} labels): crop (above); soft label "
                 "(blue) and class area under the patch (grey)", fontsize=9)
    return fig


def figure_png(fig: Any, path: str | os.PathLike | None = None, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; also written atomically to `path` when given."""
    from ..io import atomic_savefig

    if path is not None:
        atomic_savefig(fig, Path(path), dpi=dpi)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def explorer(runs: dict[str, dict], start: int = 0):
    """An ipywidgets box: a poster chooser and a patch slider above `patch_figure` of the chosen patch."""
    import ipywidgets as widgets
    from IPython.display import Image

    if not runs:
        raise PoddError("the explorer needs at least one run")
    names = list(runs)
    choose = widgets.Dropdown(options=names, value=names[0], description="poster")
    geom0 = runs[names[0]]["geometry"]
    slider = widgets.IntSlider(value=min(max(start, 0), geom0.n_patches - 1), min=0, max=geom0.n_patches - 1,
                               description="patch", continuous_update=False)
    text = widgets.HTML()
    out = widgets.Output()

    def redraw(_change: Any = None) -> None:
        """Redraw the chosen poster's chosen patch."""
        run = runs[choose.value]
        slider.max = run["geometry"].n_patches - 1
        text.value = describe(patch_info(run, slider.value), run["classes"])
        # The Output widget's state is set directly (no `with out:` capture and no clear_output(wait=True)):
        # papermill's client waits forever on a captured clear_output when no frontend is attached.
        out.outputs = ()
        out.append_display_data(Image(figure_png(patch_figure(run, slider.value))))

    choose.observe(redraw, names="value")
    slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([choose, slider]), text, out])
