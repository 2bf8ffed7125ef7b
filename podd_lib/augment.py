"""Differentiable augmentation: the paper's "flip_rotate" and the DSA operations (Zhao & Bilen 2021).

Every operation is batched, differentiable w.r.t. the images, and draws its randomness from an
explicit `torch.Generator` (None = the global RNG). Random values are drawn on the generator's
device and then moved to the images' device, so a CPU generator gives the same augmentation on
CPU and GPU. Each image gets its own random parameters (DSA's "Siamese" sharing of parameters
across a batch is not implemented).

Images are (N, C, H, W), or (K, B, C, H, W) with a leading model axis: those are flattened,
augmented image by image, and reshaped back.

`augment(x, strategy, generator, mode)`: `strategy` is "none" or ops joined by "_", e.g.
"flip_rotate" or "color_crop_cutout_flip_scale_rotate". mode "single" (DSA's default, and the
meaning of the paper's "flip_rotate"): pick ONE op per batch (per model when x has a model
axis) and apply it; mode "all": apply every op in turn.

Defaults are DSA's (`ParamDiffAug`): flip p 0.5; rotate +-15 degrees; scale each axis in
[1/1.2, 1.2]; crop = translate by an integer shift of up to round(0.125 * side) pixels with zero
fill; cutout zeroes a square of half the side; color = brightness + U(-0.5, 0.5), saturation
x U(0, 2), contrast x U(0.5, 1.5). Warps use affine_grid / grid_sample with bilinear
interpolation, zero padding and align_corners=False (so a zero angle is the identity).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from podd_lib.errors import PoddError

Gen = torch.Generator | None


# ---------------------------------------------------------------- random draws (on the generator)

def _uniform(n: int, lo: float, hi: float, g: Gen, like: Tensor) -> Tensor:
    """n draws from U(lo, hi), made on the generator's device, returned on like's device/dtype."""
    dev = g.device if g is not None else torch.device("cpu")
    u = torch.rand(n, generator=g, device=dev)
    return (lo + (hi - lo) * u).to(device=like.device, dtype=like.dtype)


def _randint(n: int, lo: int, hi: int, g: Gen, like: Tensor) -> Tensor:
    """n integers in [lo, hi), made on the generator's device, returned on like's device."""
    dev = g.device if g is not None else torch.device("cpu")
    return torch.randint(lo, hi, (n,), generator=g, device=dev).to(like.device)


def _check_images(x: Tensor) -> None:
    """Raise PoddError unless x is a float tensor of shape (N, C, H, W) or (K, B, C, H, W)."""
    if not isinstance(x, Tensor) or x.dim() not in (4, 5) or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise PoddError(f"augment expects float images (N,C,H,W) or (K,B,C,H,W), got {shape}")


def _flat(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Let a (N, C, H, W) operation accept (K, B, C, H, W) by flattening the two leading axes."""
    @functools.wraps(fn)
    def wrapped(x: Tensor, generator: Gen = None, **kw: float) -> Tensor:
        _check_images(x)
        if x.dim() == 5:
            return fn(x.flatten(0, 1), generator, **kw).view(x.shape)
        return fn(x, generator, **kw)
    return wrapped


# ---------------------------------------------------------------- deterministic transforms

def warp(x: Tensor, theta: Tensor) -> Tensor:
    """Resample x (N,C,H,W) through affine matrices theta (N,2,3): bilinear, zero padding."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotate_by(x: Tensor, degrees: Tensor) -> Tensor:
    """Rotate each image by its angle in degrees (N,), about the centre, in pixel space."""
    h, w = x.shape[-2:]
    rad = degrees.to(x) * (math.pi / 180.0)
    cos, sin, zero = torch.cos(rad), torch.sin(rad), torch.zeros_like(rad)
    theta = torch.stack([torch.stack([cos, -sin * h / w, zero], -1),
                         torch.stack([sin * w / h, cos, zero], -1)], -2)
    return warp(x, theta)


def scale_by(x: Tensor, sx: Tensor, sy: Tensor) -> Tensor:
    """Scale the sampling grid of each image by (sx, sy) (N,) each; >1 zooms out."""
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], -1), torch.stack([zero, sy, zero], -1)], -2)
    return warp(x, theta)


def flip_with(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror (left-right) the images where the boolean mask (N,) is True."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def translate_by(x: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
    """Shift each image by integer pixels (dy, dx) (N,) each, filling with zeros."""
    n, c, h, w = x.shape
    rows = torch.arange(h, device=x.device)[None, :] - dy[:, None]  # source row of each output row
    cols = torch.arange(w, device=x.device)[None, :] - dx[:, None]
    keep = (((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :])
    out = x.gather(2, rows.clamp(0, h - 1)[:, None, :, None].expand(n, c, h, w))
    out = out.gather(3, cols.clamp(0, w - 1)[:, None, None, :].expand(n, c, h, w))
    return out * keep[:, None].to(x.dtype)


def cutout_at(x: Tensor, cy: Tensor, cx: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero a size=(sh, sw) rectangle centred at integer (cy, cx) (N,) each in every image."""
    h, w = x.shape[-2:]
    sh, sw = size
    rows = torch.arange(h, device=x.device)[None, :] - (cy[:, None] - sh // 2)
    cols = torch.arange(w, device=x.device)[None, :] - (cx[:, None] - sw // 2)
    inside = ((rows >= 0) & (rows < sh))[:, :, None] & ((cols >= 0) & (cols < sw))[:, None, :]
    return x * (~inside)[:, None].to(x.dtype)


def color_with(x: Tensor, brightness: Tensor, saturation: Tensor, contrast: Tensor) -> Tensor:
    """DSA colour jitter with explicit factors (N,) each: add brightness, scale saturation, contrast."""
    x = x + brightness.view(-1, 1, 1, 1)
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * saturation.view(-1, 1, 1, 1) + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * contrast.view(-1, 1, 1, 1) + m


# ---------------------------------------------------------------- random operations

@_flat
def flip(x: Tensor, generator: Gen = None, p: float = 0.5) -> Tensor:
    """Mirror each image with probability p."""
    return flip_with(x, _uniform(x.shape[0], 0.0, 1.0, generator, x) < p)


@_flat
def rotate(x: Tensor, generator: Gen = None, max_degrees: float = 15.0) -> Tensor:
    """Rotate each image by a uniform angle in [-max_degrees, max_degrees]."""
    return rotate_by(x, _uniform(x.shape[0], -max_degrees, max_degrees, generator, x))


@_flat
def scale(x: Tensor, generator: Gen = None, ratio: float = 1.2) -> Tensor:
    """Scale each axis of each image by a uniform factor in [1/ratio, ratio]."""
    n = x.shape[0]
    sx = _uniform(n, 1.0 / ratio, ratio, generator, x)
    sy = _uniform(n, 1.0 / ratio, ratio, generator, x)
    return scale_by(x, sx, sy)


@_flat
def crop(x: Tensor, generator: Gen = None, ratio: float = 0.125) -> Tensor:
    """Translate each image by up to round(ratio * side) pixels per axis, zero padded (DSA crop)."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = _randint(n, -sh, sh + 1, generator, x)
    dx = _randint(n, -sw, sw + 1, generator, x)
    return translate_by(x, dy, dx)


@_flat
def cutout(x: Tensor, generator: Gen = None, ratio: float = 0.5) -> Tensor:
    """Zero a (ratio*H) x (ratio*W) rectangle at a uniform random centre in each image."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = _randint(n, 0, h + (1 - sh % 2), generator, x)
    cx = _randint(n, 0, w + (1 - sw % 2), generator, x)
    return cutout_at(x, cy, cx, (sh, sw))


@_flat
def color(x: Tensor, generator: Gen = None, brightness: float = 1.0, saturation: float = 2.0,
          contrast: float = 0.5) -> Tensor:
    """DSA colour: brightness + U(-b/2, b/2), saturation x U(0, s), contrast x U(c, c + 1)."""
    n = x.shape[0]
    b = _uniform(n, -brightness / 2, brightness / 2, generator, x)
    s = _uniform(n, 0.0, saturation, generator, x)
    c = _uniform(n, contrast, contrast + 1.0, generator, x)
    return color_with(x, b, s, c)


OPS: dict[str, Callable[..., Tensor]] = {
    "color": color, "crop": crop, "cutout": cutout, "flip": flip, "scale": scale, "rotate": rotate,
}
MODES = ("single", "all")
DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"


def parse_strategy(strategy: str) -> list[str]:
    """The op names of a strategy string ("none" -> []); PoddError on an unknown op."""
    if not isinstance(strategy, str):
        raise PoddError(f"augmentation strategy must be a string, got {type(strategy).__name__}")
    if strategy in ("none", ""):
        return []
    if strategy == "dsa":  # shorthand for DSA's full strategy
        strategy = DSA_STRATEGY
    ops = strategy.split("_")
    bad = [op for op in ops if op not in OPS]
    if bad:
        raise PoddError(f"unknown augmentation op {bad[0]!r} in {strategy!r}; "
                        f"known: none, {', '.join(OPS)}")
    return ops


def augment(x: Tensor, strategy: str, generator: Gen = None, mode: str = "single") -> Tensor:
    """Apply a strategy: mode "single" picks one op per batch (per model for 5-D x), "all" chains them."""
    ops = parse_strategy(strategy)
    if mode not in MODES:
        raise PoddError(f"unknown augmentation mode {mode!r}; choose one of {', '.join(MODES)}")
    _check_images(x)
    if not ops:
        return x
    if mode == "all":
        for op in ops:
            x = OPS[op](x, generator)
        return x
    k = x.shape[0] if x.dim() == 5 else 1
    choice = _randint(k, 0, len(ops), generator, x)
    if k == 1:
        return OPS[ops[int(choice)]](x, generator)
    flat = x.flatten(0, 1)
    per_image = choice.repeat_interleave(x.shape[1])
    out = flat
    for j, op in enumerate(ops):
        idx = torch.nonzero(per_image == j).flatten()
        if idx.numel():
            out = out.index_copy(0, idx, OPS[op](flat[idx], generator))
    return out.view(x.shape)


def flip_rotate(x: Tensor, generator: Gen = None) -> Tensor:
    """The paper's augmentation: per batch (per model) either flip (p 0.5) or rotate (+-15 degrees)."""
    return augment(x, "flip_rotate", generator, mode="single")
