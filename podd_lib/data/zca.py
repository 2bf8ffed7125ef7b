"""Preprocessing of real images: ZCA whitening (the paper's) or per-channel mean/std, with exact inverses.

  * "zca": every image minus its own mean over all C*H*W values, divided by its L2 norm; then
    x @ W with W = V diag(1 / sqrt(e + reg * mean(e))) V^T, (V, e) the eigendecomposition of the
    second-moment matrix X^T X / N of the normalised training images (computed in float64).
    As in the authors' release (and KIP/FRePo before it) the features are not mean-centred
    before X^T X; the per-image normalisation already removes each image's mean.
    The inverse uses sqrt(e + reg * mean(e)) and returns to the per-image-normalised space.
  * "meanstd": per-channel (x - mean) / std over the training pixels in [0, 1]; exact inverse.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from podd_lib.errors import PoddError

DEFAULT_ZCA_REG = 0.1
_CHUNK = 4096


# ----------------------------------------------------------------------------- preprocessing

def _as_unit_float(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 -> float32 in [0, 1]; float input is taken to be in [0, 1] already."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if t.dtype == torch.uint8:
        return t.to(torch.float32) / 255.0
    if not t.is_floating_point():
        raise PoddError(f"expected uint8 or floating point images, got dtype {t.dtype}")
    return t


def _check_images(x: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    """Raise PoddError unless x is (N, *shape) (shape may be just (C,) to check channels only)."""
    if x.ndim != 4 or tuple(x.shape[1:1 + len(shape)]) != tuple(shape):
        want = "(N, " + ", ".join(str(s) for s in shape) + (", H, W)" if len(shape) == 1 else ")")
        raise PoddError(f"{what}: expected images of shape {want}, got {tuple(x.shape)}")


def normalize_per_image(x: torch.Tensor) -> torch.Tensor:
    """Subtract each image's mean over all C*H*W values and divide by its L2 norm."""
    flat = x.reshape(x.shape[0], -1)
    flat = flat - flat.mean(dim=1, keepdim=True)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).reshape(x.shape)


def window_offsets(size: int, window: int, stride: int) -> list[int]:
    """Offsets 0, stride, 2*stride, ... of windows along one axis, plus one flush with the far edge."""
    offsets = list(range(0, size - window + 1, stride))
    if offsets[-1] != size - window:
        offsets.append(size - window)
    return offsets


class Preprocessor:
    """Invertible image preprocessing; subclasses are `ZCA` ("zca") and `MeanStd` ("meanstd")."""

    kind: str = ""

    def apply(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Preprocess (N, C, H, W) uint8 or [0, 1] float images into float32."""
        raise NotImplementedError

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Map preprocessed (N, C, H, W) images back (see the subclass for the target space)."""
        raise NotImplementedError

    def inverse_poster(self, poster: torch.Tensor, image_size: tuple[int, int] | None = None,
                       stride: int | None = None) -> torch.Tensor:
        """Map a preprocessed (C, d_h, d_w) poster back (see the subclass)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Plain dict of tensors and numbers (torch.save-able with a poster)."""
        raise NotImplementedError

    @staticmethod
    def from_state_dict(state: dict[str, Any]) -> "Preprocessor":
        """Rebuild the preprocessor saved by `state_dict`."""
        kind = state.get("kind") if isinstance(state, dict) else None
        if kind == "zca":
            return ZCA(state["eigvecs"], state["eigvals"], float(state["reg"]),
                       tuple(int(s) for s in state["image_shape"]))
        if kind == "meanstd":
            return MeanStd(state["mean"], state["std"])
        raise PoddError(f"unknown preprocessor state (kind={kind!r}); expected 'zca' or 'meanstd'")


class MeanStd(Preprocessor):
    """Per-channel (x - mean) / std on pixels in [0, 1]; `inverse` returns pixels in [0, 1] exactly."""

    kind = "meanstd"

    def __init__(self, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor):
        """Store per-channel mean and std (floats in [0, 1] pixel units)."""
        self.mean = torch.as_tensor(mean, dtype=torch.float64).flatten()
        self.std = torch.as_tensor(std, dtype=torch.float64).flatten()
        if self.mean.shape != self.std.shape or bool((self.std <= 0).any()):
            raise PoddError("meanstd preprocessor needs one mean and one positive std per channel")

    @property
    def channels(self) -> int:
        """Number of channels."""
        return int(self.mean.numel())

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std shaped (C, 1, 1) on like's device and dtype."""
        shape = (-1, 1, 1)
        return (self.mean.to(like.device, like.dtype).view(shape),
                self.std.to(like.device, like.dtype).view(shape))

    def apply(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(x / 255 - mean) / std per channel."""
        x = _as_unit_float(x)
        _check_images(x, (self.channels,), "meanstd apply")
        mean, std = self._stats(x)
        return (x - mean).div_(std)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """x * std + mean per channel: pixels in [0, 1] (exact)."""
        _check_images(x, (self.channels,), "meanstd inverse")
        mean, std = self._stats(x)
        return x * std + mean

    def inverse_poster(self, poster: torch.Tensor, image_size: tuple[int, int] | None = None,
                       stride: int | None = None) -> torch.Tensor:
        """Exact per-channel inverse of a (C, d_h, d_w) poster (image_size and stride are unused)."""
        if poster.ndim != 3:
            raise PoddError(f"inverse_poster: expected a (C, d_h, d_w) poster, got {tuple(poster.shape)}")
        return self.inverse(poster.unsqueeze(0))[0]

    def state_dict(self) -> dict[str, Any]:
        """{'kind': 'meanstd', 'mean': (C,), 'std': (C,)}."""
        return {"kind": self.kind, "mean": self.mean.clone(), "std": self.std.clone()}


class ZCA(Preprocessor):
    """ZCA whitening of per-image-normalised images (method notes, section 5).

    Keeps the eigendecomposition (V, e) of the training second-moment matrix and the absolute
    regulariser reg = strength * mean(e); W = V diag((e + reg)^-1/2) V^T whitens and
    W^-1 = V diag((e + reg)^1/2) V^T maps whitened images back to the per-image-normalised space.
    """

    kind = "zca"

    def __init__(self, eigvecs: torch.Tensor | np.ndarray, eigvals: torch.Tensor | np.ndarray,
                 reg: float, image_shape: tuple[int, int, int]):
        """eigvecs (d, d) as columns, eigvals (d,), reg the absolute regulariser, image_shape (C, H, W)."""
        self.eigvecs = torch.as_tensor(eigvecs).to(torch.float32)
        self.eigvals = torch.as_tensor(eigvals).to(torch.float64).clamp_min(0.0)
        self.reg = float(reg)
        self.image_shape = tuple(int(s) for s in image_shape)
        d = int(np.prod(self.image_shape))
        if self.eigvecs.shape != (d, d) or self.eigvals.shape != (d,) or not self.reg > 0:
            raise PoddError(f"inconsistent ZCA state: eigvecs {tuple(self.eigvecs.shape)}, "
                            f"eigvals {tuple(self.eigvals.shape)}, reg {self.reg}, image {self.image_shape}")
        self._mats: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the images this whitening is defined on."""
        return self.image_shape[1], self.image_shape[2]

    def _matrix(self, which: str, like: torch.Tensor) -> torch.Tensor:
        """W ('fwd') or W^-1 ('inv') as a (d, d) matrix on like's device and dtype (memoised)."""
        key = (which, like.device, like.dtype)
        if key not in self._mats:
            power = -0.5 if which == "fwd" else 0.5
            dtype = torch.float64 if self.eigvecs.shape[0] <= 4096 else torch.float32  # Tiny: d = 12288
            v = self.eigvecs.to(dtype)
            scale = (self.eigvals + self.reg).pow(power).to(dtype)
            self._mats[key] = ((v * scale) @ v.T).to(like.device, like.dtype)
        return self._mats[key]

    def _matmul(self, x: torch.Tensor, which: str) -> torch.Tensor:
        """Flatten (N, C, H, W) images, multiply by the symmetric matrix, reshape back."""
        return (x.reshape(x.shape[0], -1) @ self._matrix(which, x)).reshape(x.shape)

    def _chunked(self, x: torch.Tensor, fn: Any) -> torch.Tensor:
        """fn over chunks of rows into one preallocated float output (all at once under autograd)."""
        if x.requires_grad or x.shape[0] <= _CHUNK:
            return fn(x)
        first = fn(x[:_CHUNK])
        out = torch.empty((x.shape[0], *first.shape[1:]), dtype=first.dtype, device=first.device)
        out[:_CHUNK] = first
        for i in range(_CHUNK, x.shape[0], _CHUNK):
            out[i:i + _CHUNK] = fn(x[i:i + _CHUNK])
        return out

    def normalize(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The per-image normalisation alone (the space `inverse` returns to)."""
        x = _as_unit_float(x)
        _check_images(x, self.image_shape, "zca normalize")
        return normalize_per_image(x)

    def apply(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Per-image normalise, then whiten with W (in chunks, converting uint8 chunk by chunk)."""
        t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        _check_images(t, self.image_shape, "zca apply")
        return self._chunked(t, lambda c: self._matmul(normalize_per_image(_as_unit_float(c)), "fwd"))

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Unwhiten (N, C, H, W) images to the per-image-normalised space (use to_display to view)."""
        _check_images(x, self.image_shape, "zca inverse")
        return self._chunked(x, lambda c: self._matmul(c, "inv"))

    def inverse_poster(self, poster: torch.Tensor, image_size: tuple[int, int] | None = None,
                       stride: int | None = None) -> torch.Tensor:
        """Unwhiten a whole (C, d_h, d_w) poster by overlapping windows.

        ZCA is defined on h x w images only, but its matrix is close to translation invariant
        (a local filter), so the poster is cut into all h x w windows at offsets 0, s, 2s, ...
        (plus one window flush with each far edge; s = stride, default h // 2 and w // 2), each
        window is unwhitened with `inverse`, and every pixel becomes the average of the windows
        that cover it (a fold). The result lives in the per-image-normalised space.
        """
        c, h, w = self.image_shape
        if image_size is not None and tuple(image_size) != (h, w):
            raise PoddError(f"inverse_poster: this ZCA is defined on {h}x{w} images, not "
                            f"{image_size[0]}x{image_size[1]}")
        if poster.ndim != 3 or poster.shape[0] != c or poster.shape[1] < h or poster.shape[2] < w:
            raise PoddError(f"inverse_poster: expected a ({c}, >={h}, >={w}) poster, got {tuple(poster.shape)}")
        sy, sx = (stride, stride) if stride else (max(1, h // 2), max(1, w // 2))
        if sy < 1:
            raise PoddError(f"inverse_poster: stride must be >= 1, got {stride}")
        dh, dw = int(poster.shape[1]), int(poster.shape[2])
        ys = torch.tensor(window_offsets(dh, h, sy), device=poster.device)
        xs = torch.tensor(window_offsets(dw, w, sx), device=poster.device)
        rows = (ys[:, None] + torch.arange(h, device=poster.device))  # (ny, h)
        cols = (xs[:, None] + torch.arange(w, device=poster.device))  # (nx, w)
        index = (rows[:, None, :, None] * dw + cols[None, :, None, :]).reshape(-1, h * w)  # (n, h*w)
        flat = poster.reshape(c, dh * dw)
        windows = flat[:, index].permute(1, 0, 2).reshape(-1, c, h, w)  # (n, C, h, w)
        restored = self.inverse(windows).permute(1, 0, 2, 3).reshape(c, -1)
        total = torch.zeros_like(flat).index_add(1, index.flatten(), restored)
        count = torch.zeros(dh * dw, dtype=poster.dtype, device=poster.device)
        count = count.index_add(0, index.flatten(), torch.ones(index.numel(), dtype=poster.dtype,
                                                                device=poster.device))
        return (total / count).reshape(c, dh, dw)

    def state_dict(self) -> dict[str, Any]:
        """{'kind': 'zca', 'eigvecs': (d, d) float32, 'eigvals': (d,) float64, 'reg', 'image_shape'}."""
        return {"kind": self.kind, "eigvecs": self.eigvecs.clone(), "eigvals": self.eigvals.clone(),
                "reg": self.reg, "image_shape": list(self.image_shape)}


def _eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric eigendecomposition; small matrices run single-threaded (threads only add sync overhead)."""
    threads = torch.get_num_threads()
    if matrix.shape[0] > 1024 or threads == 1:
        return torch.linalg.eigh(matrix)
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(matrix)
    finally:
        torch.set_num_threads(threads)


def second_moment(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """X^T X / N of the per-image-normalised (N, C, H, W) images: float32 chunk products summed in float64."""
    x = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    n = x.shape[0]
    d = int(np.prod(x.shape[1:]))
    acc = torch.zeros(d, d, dtype=torch.float64)
    for i in range(0, n, _CHUNK):
        chunk = normalize_per_image(_as_unit_float(x[i:i + _CHUNK]).to(torch.float64)).reshape(-1, d)
        chunk = chunk.to(torch.float32)
        acc += chunk.T @ chunk
    return acc / n


def fit_zca(x_train: torch.Tensor | np.ndarray, strength: float = DEFAULT_ZCA_REG) -> ZCA:
    """Fit ZCA on (N, C, H, W) training images: reg = strength * mean eigenvalue."""
    if not strength > 0:
        raise PoddError(f"ZCA regularisation strength must be > 0, got {strength}")
    if x_train.ndim != 4 or x_train.shape[0] < 1:
        raise PoddError(f"fit_zca: expected (N, C, H, W) training images, got {tuple(x_train.shape)}")
    evals, evecs = _eigh(second_moment(x_train))
    evals = evals.clamp_min(0.0)
    return ZCA(evecs, evals, strength * float(evals.mean()), tuple(x_train.shape[1:]))


def fit_meanstd(x_train: torch.Tensor | np.ndarray) -> MeanStd:
    """Fit per-channel mean/std of (N, C, H, W) uint8 training images (exact, via histograms)."""
    x = x_train.numpy() if isinstance(x_train, torch.Tensor) else np.asarray(x_train)
    if x.ndim != 4 or x.shape[0] < 1:
        raise PoddError(f"fit_meanstd: expected (N, C, H, W) training images, got {tuple(x.shape)}")
    if x.dtype != np.uint8:
        flat = torch.as_tensor(x, dtype=torch.float64).transpose(0, 1).reshape(x.shape[1], -1)
        return MeanStd(flat.mean(1), flat.std(1, unbiased=False).clamp_min(1e-8))
    levels = np.arange(256, dtype=np.float64) / 255.0
    counts = np.stack([np.bincount(x[:, c].ravel(), minlength=256) for c in range(x.shape[1])]).astype(np.float64)
    n = counts.sum(1)
    mean = counts @ levels / n
    var = counts @ levels ** 2 / n - mean ** 2
    return MeanStd(mean, np.sqrt(np.maximum(var, 1e-16)))


def to_display(x: torch.Tensor) -> torch.Tensor:
    """Rescale each (C, H, W) image or poster (alone or in an N batch) to [0, 1] by its own min/max."""
    if x.ndim not in (3, 4):
        raise PoddError(f"to_display: expected (C, H, W) or (N, C, H, W), got {tuple(x.shape)}")
    batch = x.detach().reshape(1 if x.ndim == 3 else x.shape[0], -1).to(torch.float32)
    lo, hi = batch.min(1, keepdim=True).values, batch.max(1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (batch - lo) / span.clamp_min(1e-12), torch.full_like(batch, 0.5))
    return out.reshape(x.shape)


