"""Section 4.1 of the paper: the shared poster.

A poster is one tensor (C, d_h, d_w). It becomes a dataset by cutting p = p_x * p_y overlapping
patches of the source image size (h, w) at offsets

    x_i = round(linspace(0, d_w - w, p_x))_i,   y_j = round(linspace(0, d_h - h, p_y))_j.

Patches are enumerated x-major, as in the authors' release: patch k = i * p_y + j sits at
(y_j, x_i). The size of the distilled set is the poster's pixel count; its IPC is

    IPC = d_h * d_w / (n * h * w).

The geometry below is plain arithmetic (no torch); extraction and initialisation are batched
tensor ops with no Python loop over patches.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from .errors import PoddError


# ----------------------------------------------------------------------------- geometry


def linspace_offsets(length: int, window: int, count: int) -> list[int]:
    """round(linspace(0, length - window, count)): the offsets of `count` windows over `length`."""
    if count == 1:
        return [0]
    span = length - window
    return [int(round(span * i / (count - 1))) for i in range(count)]


def ipc_of(d_h: int, d_w: int, n_classes: int, h: int, w: int) -> float:
    """Exact images-per-class of a d_h x d_w poster: pixels / (n * h * w)."""
    return d_h * d_w / (n_classes * h * w)


def pixel_budget(ipc: float, n_classes: int, h: int, w: int) -> int:
    """The largest whole number of pixels that `ipc` allows (floor of ipc * n * h * w)."""
    return int(math.floor(ipc * n_classes * h * w + 1e-6))


def poster_size(ipc: float, n_classes: int, h: int, w: int, o_x: int, o_y: int) -> tuple[int, int]:
    """Poster (d_h, d_w) for `ipc`: the 1-IPC tiling (o_y*h, o_x*w) scaled by sqrt(ipc), within budget.

    d_h = round(o_y * h * sqrt(ipc)), then d_w = floor(budget / d_h), so d_h * d_w never exceeds
    ipc * n * h * w. (The release takes the size as an argument; its 0.9-IPC posters, e.g.
    CIFAR-10 60x153, are within a pixel or two of this rule and can be set explicitly.)
    """
    budget = pixel_budget(ipc, n_classes, h, w)
    d_h = max(1, int(round(o_y * h * math.sqrt(ipc))))
    d_w = budget // d_h
    return d_h, d_w


@dataclass(frozen=True)
class PosterGeometry:
    """Everything about a poster's shape: image size, class grid, patch grid, poster size."""

    n_classes: int
    h: int  # source image height
    w: int  # source image width
    o_x: int  # class grid: classes per row
    o_y: int  # class grid: rows of classes
    p_x: int  # patches along x
    p_y: int  # patches along y
    d_h: int  # poster height
    d_w: int  # poster width
    ipc_requested: float

    @property
    def n_patches(self) -> int:
        """p = p_x * p_y."""
        return self.p_x * self.p_y

    @property
    def pixels(self) -> int:
        """d_h * d_w."""
        return self.d_h * self.d_w

    @property
    def ipc(self) -> float:
        """The exact IPC of this poster."""
        return ipc_of(self.d_h, self.d_w, self.n_classes, self.h, self.w)

    @property
    def xs(self) -> list[int]:
        """Patch x offsets."""
        return linspace_offsets(self.d_w, self.w, self.p_x)

    @property
    def ys(self) -> list[int]:
        """Patch y offsets."""
        return linspace_offsets(self.d_h, self.h, self.p_y)

    @property
    def is_tiling(self) -> bool:
        """True when the patches tile the poster without overlap (the RaT-BPTT baseline)."""
        return self.d_w == self.p_x * self.w and self.d_h == self.p_y * self.h

    def to_dict(self) -> dict:
        """JSON-ready description, derived values included."""
        d = asdict(self)
        d.update(
            n_patches=self.n_patches,
            pixels=self.pixels,
            ipc=self.ipc,
            pixel_budget=pixel_budget(self.ipc_requested, self.n_classes, self.h, self.w),
            stride_x=(self.d_w - self.w) / (self.p_x - 1) if self.p_x > 1 else 0.0,
            stride_y=(self.d_h - self.h) / (self.p_y - 1) if self.p_y > 1 else 0.0,
            is_tiling=self.is_tiling,
        )
        return d


def _check_cover(length: int, window: int, count: int, axis: str) -> None:
    """Raise unless `count` windows at linspace offsets cover `length` without gaps."""
    if count < 1:
        raise PoddError(f"patch grid needs at least 1 patch along {axis}, got {count}")
    if count == 1 and length != window:
        raise PoddError(f"1 patch along {axis} cannot cover a poster {length} px wide with {window} px patches")
    offs = linspace_offsets(length, window, count)
    gap = max((b - a for a, b in zip(offs, offs[1:])), default=0)
    if gap > window:
        need = math.ceil((length - window) / window) + 1
        raise PoddError(
            f"{count} patches along {axis} leave gaps in a {length} px poster "
            f"(stride {gap} > patch {window}); use at least {need}"
        )


def make_geometry(
    ipc: float,
    n_classes: int,
    image_size: tuple[int, int],
    class_grid: tuple[int, int],
    patch_grid: tuple[int, int],
    size: tuple[int, int] | None = None,
) -> PosterGeometry:
    """Validate the inputs and build the geometry; class_grid and patch_grid are (x, y).

    `size` = (d_h, d_w) overrides the sqrt rule; it must still fit the pixel budget.
    """
    h, w = image_size
    o_x, o_y = class_grid
    p_x, p_y = patch_grid
    if not (ipc > 0 and math.isfinite(ipc)):
        raise PoddError(f"IPC must be a positive number, got {ipc}")
    if o_x < 1 or o_y < 1 or o_x * o_y != n_classes:
        raise PoddError(f"class grid {o_x}x{o_y} holds {o_x * o_y} cells but the dataset has {n_classes} classes")
    d_h, d_w = size if size is not None else poster_size(ipc, n_classes, h, w, o_x, o_y)
    if size is not None and d_h * d_w > pixel_budget(ipc, n_classes, h, w):
        raise PoddError(
            f"poster {d_w}x{d_h} has {d_h * d_w} pixels, more than IPC {ipc} allows "
            f"({pixel_budget(ipc, n_classes, h, w)})"
        )
    if d_h < h or d_w < w:
        raise PoddError(
            f"poster {d_w}x{d_h} (IPC {ipc}) is smaller than one {w}x{h} patch; raise the IPC or change the class grid"
        )
    _check_cover(d_w, w, p_x, "x")
    _check_cover(d_h, h, p_y, "y")
    return PosterGeometry(n_classes, h, w, o_x, o_y, p_x, p_y, d_h, d_w, float(ipc))


def tiling_geometry(n_classes: int, image_size: tuple[int, int], class_grid: tuple[int, int]) -> PosterGeometry:
    """The RaT-BPTT baseline as a poster: one non-overlapping patch per class at 1 IPC."""
    h, w = image_size
    o_x, o_y = class_grid
    return make_geometry(1.0, n_classes, image_size, class_grid, (o_x, o_y), size=(o_y * h, o_x * w))


# ----------------------------------------------------------------------------- patches


def patch_offsets(geom: PosterGeometry, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """(oy, ox): LongTensors of shape (p,) with every patch's top-left corner, x-major order."""
    xs = torch.tensor(geom.xs, dtype=torch.long, device=device)
    ys = torch.tensor(geom.ys, dtype=torch.long, device=device)
    ox = xs.repeat_interleave(geom.p_y)
    oy = ys.repeat(geom.p_x)
    return oy, ox


def extract_windows(grid: Tensor, oy: Tensor, ox: Tensor, h: int, w: int) -> Tensor:
    """Cut (B, C, h, w) windows at offsets (oy, ox) from a (C, H, W) tensor by one gather.

    Differentiable: the backward adds every window's gradient onto the grid, so overlapping
    windows add up their gradients on shared pixels. The gather is an `index_select` over the
    flattened pixels, whose backward (`index_add_`) sums in index order on the CPU: bitwise the
    same from run to run, where advanced indexing's backward adds with atomics in thread order.
    """
    c, height, width = grid.shape
    rows = oy[:, None] + torch.arange(h, device=grid.device)  # (B, h)
    cols = ox[:, None] + torch.arange(w, device=grid.device)  # (B, w)
    flat = (rows[:, :, None] * width + cols[:, None, :]).reshape(-1)  # (B * h * w,) pixel indices
    out = grid.reshape(c, height * width).index_select(1, flat)  # (C, B * h * w)
    return out.view(c, -1, h, w).transpose(0, 1)


def poster_count(poster: Tensor) -> int:
    """K for a (K, C, H, W) stack of per-class posters (paper figure 9), 1 for one (C, H, W) poster."""
    return poster.shape[0] if poster.dim() == 4 else 1


def extract_patches(poster: Tensor, geom: PosterGeometry, idx: Tensor | None = None) -> Tensor:
    """The poster's patches (all, or those at indices idx) as a (B, C, h, w) batch.

    A (K, C, H, W) stack of per-class posters, each with geometry geom, gives K * p patches,
    poster k's patches at indices k*p .. k*p + p - 1 (the stack is cut as one tall poster).
    """
    oy, ox = patch_offsets(geom, poster.device)
    if poster.dim() == 4:
        k, c, height, width = poster.shape
        oy = (oy[None, :] + height * torch.arange(k, device=poster.device)[:, None]).reshape(-1)
        ox = ox.repeat(k)
        poster = poster.transpose(0, 1).reshape(c, k * height, width)
    if idx is not None:
        oy, ox = oy[idx], ox[idx]
    return extract_windows(poster, oy, ox, geom.h, geom.w)


# ----------------------------------------------------------------------------- initialisation


def init_normal(geom: PosterGeometry, channels: int, generator: torch.Generator | None = None) -> Tensor:
    """The paper's initialisation: standard Gaussian noise, (C, d_h, d_w)."""
    return torch.randn(channels, geom.d_h, geom.d_w, generator=generator)


def _ramp(length: int, left: int, right: int) -> Tensor:
    """1 inside; over the `left` px shared with the previous area linspace(0, 1), over the `right` px 1 - linspace(0, 1).

    As the release's fade masks: across an overlap the earlier area's weight falls from 1 to 0 and the
    later one's rises from 0 to 1, so the two weights sum to 1 on every pixel.
    """
    w = torch.ones(length)
    if left:
        w[:left] = torch.linspace(0, 1, left)
    if right:
        w[length - right:] = torch.minimum(w[length - right:], 1 - torch.linspace(0, 1, right))
    return w


def _area_profile(offs: list[int], size: int, length: int) -> Tensor:
    """(count, length) cross-fade weights of windows of `size` at `offs` along one axis."""
    prof = torch.zeros(len(offs), length)
    for i, o in enumerate(offs):  # one entry per class row/column, not per patch
        left = max(0, offs[i - 1] + size - o) if i > 0 else 0
        right = max(0, o + size - offs[i + 1]) if i + 1 < len(offs) else 0
        prof[i, o : o + size] = _ramp(size, left, right)
    return prof


def class_area_boxes(geom: PosterGeometry) -> tuple[list[int], list[int], int, int]:
    """Class areas: (ys, xs, a_h, a_w), image-sized areas placed by the linspace rule.

    Areas grow beyond the image size only when needed to cover a poster larger than the 1-IPC
    tiling.
    """
    a_h = min(geom.d_h, max(geom.h, math.ceil(geom.d_h / geom.o_y)))
    a_w = min(geom.d_w, max(geom.w, math.ceil(geom.d_w / geom.o_x)))
    return linspace_offsets(geom.d_h, a_h, geom.o_y), linspace_offsets(geom.d_w, a_w, geom.o_x), a_h, a_w


def init_class_areas(
    geom: PosterGeometry, channels: int, order: list[list[int]], generator: torch.Generator | None = None
) -> Tensor:
    """The release's initialisation: one Gaussian area per class, blended with linear cross-fades.

    Class means ~ N(0, I); each area = mean + std * N(0, I) with std = (min distance between
    means) / 4; each area scaled to unit L2 norm; overlaps cross-fade linearly.
    """
    _, _, a_h, a_w = class_area_boxes(geom)
    n = geom.n_classes
    means = torch.randn(n, channels * a_h * a_w, generator=generator)
    dist = torch.cdist(means, means).masked_fill(torch.eye(n, dtype=torch.bool), float("inf"))
    std = dist.min() / 4 if n > 1 else torch.tensor(1.0)
    areas = means + std * torch.randn(n, channels * a_h * a_w, generator=generator)
    areas = (areas / areas.norm(dim=1, keepdim=True)).view(n, channels, a_h, a_w)
    return blend_areas(geom, areas, order)


def blend_areas(geom: PosterGeometry, areas: Tensor, order: list[list[int]]) -> Tensor:
    """Place each class's (C, a_h, a_w) area in its cell of the class grid; overlaps cross-fade linearly."""
    ys, xs, a_h, a_w = class_area_boxes(geom)
    channels = areas.shape[1]
    cls = torch.tensor(order, dtype=torch.long)  # (o_y, o_x) class of each cell
    wy = _area_profile(ys, a_h, geom.d_h)  # (o_y, d_h)
    wx = _area_profile(xs, a_w, geom.d_w)  # (o_x, d_w)
    # Place every cell's area on a full-size canvas, weight it, and normalise the weights.
    canvas = torch.zeros(geom.o_y, geom.o_x, channels, geom.d_h, geom.d_w, dtype=areas.dtype)
    for r, y in enumerate(ys):  # o_y * o_x cells: one per class
        for c, x in enumerate(xs):
            canvas[r, c, :, y : y + a_h, x : x + a_w] = areas[cls[r, c]]
    weight = wy[:, None, None, :, None] * wx[None, :, None, None, :]  # (o_y, o_x, 1, d_h, d_w)
    return (canvas * weight).sum((0, 1)) / weight.sum((0, 1)).clamp_min(1e-12)


def init_from_images(geom: PosterGeometry, images: Tensor, order: list[list[int]]) -> Tensor:
    """Real-image initialisation: class k's image (n, C, h, w) resized to its class area, cross-faded."""
    if images.shape[0] != geom.n_classes:
        raise PoddError(f"need one image per class ({geom.n_classes}), got {images.shape[0]}")
    _, _, a_h, a_w = class_area_boxes(geom)
    areas = images.float()
    if (a_h, a_w) != tuple(images.shape[-2:]):
        areas = torch.nn.functional.interpolate(areas, size=(a_h, a_w), mode="bilinear", align_corners=False)
    return blend_areas(geom, areas, order)


def init_poster(
    geom: PosterGeometry,
    channels: int,
    kind: str,
    order: list[list[int]],
    generator: torch.Generator | None = None,
) -> Tensor:
    """Initialise a poster: kind 'normal' (the paper) or 'class_areas' (the release)."""
    if kind == "normal":
        return init_normal(geom, channels, generator)
    if kind == "class_areas":
        return init_class_areas(geom, channels, order, generator)
    raise PoddError(f"unknown poster init {kind!r}; use 'normal' (paper) or 'class_areas' (release)")
