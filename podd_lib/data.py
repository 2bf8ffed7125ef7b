"""Real datasets (CIFAR-10/100, CUB-200-2011, Tiny-ImageNet, any ImageFolder) and their preprocessing.

One entry point, `load_dataset`, returns a `RealData`: float32 (N, C, H, W) tensors already
preprocessed, integer labels, human-readable class names and the `Preprocessor` that made them.

Preprocessing (method notes, section 5):
  * "zca": every image minus its own mean over all C*H*W values, divided by its L2 norm; then
    x @ W with W = V diag(1 / sqrt(e + reg * mean(e))) V^T, (V, e) the eigendecomposition of the
    second-moment matrix X^T X / N of the normalised training images (computed in float64).
    As in the authors' release (and KIP/FRePo before it) the features are not mean-centred
    before X^T X; the per-image normalisation already removes each image's mean.
    The inverse uses sqrt(e + reg * mean(e)) and returns to the per-image-normalised space.
  * "meanstd": per-channel (x - mean) / std over the training pixels in [0, 1]; exact inverse.

Decoded uint8 arrays and ZCA eigendecompositions are cached under `<root>/.podd_cache/` (npz,
written atomically) keyed by dataset, source folder, subset settings and preprocessing settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from podd_lib.errors import PoddError
from podd_lib.io import atomic_numpy_savez

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "cub200", "tinyimagenet")
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
DEFAULT_ZCA_REG = 0.1
CACHE_DIRNAME = ".podd_cache"
CACHE_VERSION = 1
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
_DEFAULT_SIZES: dict[str, tuple[int, int]] = {
    "cifar10": (32, 32), "cifar100": (32, 32), "cub200": (32, 32), "tinyimagenet": (64, 64),
}
_FALLBACK_SIZE = (32, 32)
_CHUNK = 4096


# ----------------------------------------------------------------------------- data root

def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The data root: the argument, else $PODD_DATA_ROOT, else ./data."""
    if data_root is not None and str(data_root) != "":
        return Path(data_root).expanduser()
    env = os.environ.get("PODD_DATA_ROOT", "")
    return Path(env).expanduser() if env else Path("data")


# ----------------------------------------------------------------------------- containers

@dataclass
class RawData:
    """Decoded dataset: uint8 (N, C, H, W) arrays, int64 labels, class names and its source folder."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    source: str

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)


@dataclass
class RealData:
    """A preprocessed dataset ready for distillation and evaluation."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    image_size: tuple[int, int]
    channels: int
    preprocess: "Preprocessor"

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)


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


# ----------------------------------------------------------------------------- decoding

def _decode_one(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """Decode one image file to (H, W, 3) uint8 RGB, resized (bilinear, antialiased) to size=(H, W)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except PoddError:
        raise
    except Exception as exc:  # PIL raises several types for unreadable files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PoddError(f"cannot read image {path}: {reason}") from None


def _resize_array(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 array to size=(H, W) (bilinear, antialiased)."""
    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR), dtype=np.uint8)


def _decode_images(paths: Sequence[Path], size: tuple[int, int] | None) -> np.ndarray:
    """Decode files in a thread pool into (N, C, H, W) uint8; size None keeps a common size, else 32x32."""
    if len(paths) == 0:
        h, w = size or _FALLBACK_SIZE
        return np.zeros((0, 3, h, w), dtype=np.uint8)
    workers = max(1, min(8, 2 * (os.cpu_count() or 1)))
    chunks = [paths[i:i + 512] for i in range(0, len(paths), 512)]
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        parts = list(pool.map(lambda chunk: [_decode_one(p, size) for p in chunk], chunks))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    images = [img for part in parts for img in part]
    if len({img.shape for img in images}) > 1:
        images = [_resize_array(img, _FALLBACK_SIZE) for img in images]
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))


def _first_per_class(labels: np.ndarray, k: int | None) -> np.ndarray:
    """Indices of the first k samples of each class, in original order (all when k is None)."""
    if k is None:
        return np.arange(len(labels))
    keep = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        keep[np.flatnonzero(labels == c)[:k]] = True
    return np.flatnonzero(keep)


def _list_images(folder: Path) -> list[Path]:
    """Image files directly inside folder, sorted by name."""
    with os.scandir(folder) as it:
        names = sorted(e.name for e in it if e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS)
    return [folder / n for n in names]


# ----------------------------------------------------------------------------- sources

@dataclass
class _Split:
    """Files and labels of one split, before decoding."""

    paths: list[Path]
    labels: np.ndarray


def _is_imagefolder(root: Path) -> bool:
    """True when root/train and root/test are folders."""
    return (root / "train").is_dir() and (root / "test").is_dir()


def _class_dirs(split_dir: Path) -> list[str]:
    """Sorted class folder names of an ImageFolder split."""
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _imagefolder_split(split_dir: Path, folders: Sequence[str], per_class: int | None) -> _Split:
    """List an ImageFolder split in the given class order, first per_class files of each class."""
    paths: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        files = _list_images(split_dir / folder) if (split_dir / folder).is_dir() else []
        files = files[:per_class] if per_class is not None else files
        paths += files
        labels += [label] * len(files)
    return _Split(paths, np.asarray(labels, dtype=np.int64))


def _imagefolder_classes(root: Path, canonical: Sequence[str] | None, label: str) -> list[str]:
    """Class folders of root/train (canonical order when given, else sorted); checks test matches."""
    train, test = _class_dirs(root / "train"), _class_dirs(root / "test")
    if not train:
        raise PoddError(f"{label}: no class folders in {root / 'train'} (expected train/<class>/<image>)")
    if set(train) != set(test):
        odd = sorted(set(train) ^ set(test))
        raise PoddError(f"{label}: train and test class folders differ in {root} ({', '.join(odd[:5])})")
    if canonical is None:
        return train
    if set(train) != set(canonical):
        raise PoddError(f"{label}: class folders in {root / 'train'} are not the {len(canonical)} expected "
                        f"classes ({', '.join(canonical[:3])}, ...)")
    return list(canonical)


def _check_class_counts(root: Path, folders: Sequence[str], label: str) -> None:
    """At least two classes, and every class with at least one training image."""
    if len(folders) < 2:
        raise PoddError(f"{label}: {root / 'train'} has only one class ({folders[0]}); a classifier needs at least 2")
    empty = [f for f in folders if not _list_images(root / "train" / f)]
    if empty:
        raise PoddError(f"{label}: class folder(s) without training images in {root / 'train'}: {', '.join(empty[:5])}")


def imagefolder_classes(name: str) -> list[str]:
    """Class names of an imagefolder:PATH dataset, checked by listing folders only (no image decoded)."""
    path = Path(name[len("imagefolder:"):]).expanduser()
    if not str(path) or not _is_imagefolder(path):
        raise PoddError(f"ImageFolder not found at {path} (expected {path}/train/<class>/<image> and "
                        f"{path}/test/<class>/<image>)")
    folders = _imagefolder_classes(path, None, "ImageFolder")
    _check_class_counts(path, folders, "ImageFolder")
    return folders


def _fingerprint(*paths: Path) -> list[int]:
    """Modification times (ns) of the given paths, 0 when missing (part of cache keys)."""
    return [p.stat().st_mtime_ns if p.exists() else 0 for p in paths]


class _Source:
    """A located dataset: where it is, its cache identity and how to decode it."""

    def __init__(self, name: str, folder: Path, stamps: Sequence[Path], size: tuple[int, int] | None,
                 loader: Any):
        """stamps: paths whose mtimes identify the data; loader(train_per_class, test_per_class, size) -> RawData."""
        self.name, self.folder, self.stamps, self.size, self.loader = name, folder, list(stamps), size, loader

    def fingerprint(self) -> list[int]:
        """Current modification times of the stamp paths (read again after a download)."""
        return _fingerprint(*self.stamps)


def _imagefolder_source(name: str, root: Path, size: tuple[int, int] | None,
                        canonical: Sequence[str] | None = None, label: str = "ImageFolder",
                        display_names: dict[str, str] | None = None) -> _Source:
    """Source for root/{train,test}/<class>/*."""
    def load(tpc: int | None, vpc: int | None, size: tuple[int, int] | None) -> RawData:
        folders = _imagefolder_classes(root, canonical, label)
        _check_class_counts(root, folders, label)
        tr = _imagefolder_split(root / "train", folders, tpc)
        te = _imagefolder_split(root / "test", folders, vpc)
        if len(tr.paths) == 0 or len(te.paths) == 0:
            raise PoddError(f"{label}: no images found under {root}/{{train,test}}/<class>/")
        x = _decode_images(tr.paths + te.paths, size)
        names = [(display_names or {}).get(f, f) for f in folders]
        return RawData(name, x[:len(tr.paths)], tr.labels, x[len(tr.paths):], te.labels, names, str(root))
    return _Source(name, root, [root / "train", root / "test"], size, load)


def _cifar_source(name: str, root: Path, size: tuple[int, int], download: bool) -> _Source:
    """CIFAR-10/100: an ImageFolder copy at <root>/<name>/{train,test} if present, else torchvision."""
    folder = root / name
    label = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    if _is_imagefolder(folder):
        canonical = CIFAR10_CLASSES if name == "cifar10" else None
        display = None if name == "cifar10" else {f: f.replace("_", " ") for f in _class_dirs(folder / "train")}
        return _imagefolder_source(name, folder, size, canonical, label, display)
    batches = folder / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    if not batches.is_dir() and not download:
        raise PoddError(f"{label} not found in {folder}; run without --no-download or put an ImageFolder copy at "
                        f"{folder}/{{train,test}}/<class>/")

    def load(tpc: int | None, vpc: int | None, size: tuple[int, int]) -> RawData:
        import torchvision  # lazy: only needed for the pickled CIFAR release
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        created = folder  # the top-most folder a download would create: removed again if it fails
        while not created.parent.exists():
            created = created.parent
        created = None if created.exists() else created
        try:
            tr = cls(str(folder), train=True, download=download)
            te = cls(str(folder), train=False, download=False)
        except BaseException as exc:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            if not isinstance(exc, Exception):
                raise
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PoddError(f"{label} could not be {'downloaded to' if download else 'read from'} {folder} "
                            f"({reason}); put an ImageFolder copy at {folder}/{{train,test}}/<class>/") from None
        out = []
        for ds, k in ((tr, tpc), (te, vpc)):
            y = np.asarray(ds.targets, dtype=np.int64)
            idx = _first_per_class(y, k)
            x = np.asarray(ds.data)[idx]
            if x.shape[1:3] != size:
                x = np.stack([_resize_array(img, size) for img in x])
            out += [np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y[idx]]
        names = [c.replace("_", " ") for c in tr.classes]
        return RawData(name, out[0], out[1], out[2], out[3], names, str(folder))
    return _Source(name, folder, [batches], size, load)


def _read_table(path: Path, columns: int) -> list[list[str]]:
    """Whitespace-separated lines of a CUB index file (last column may contain spaces)."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            parts = line.split(maxsplit=columns - 1)
            if len(parts) != columns:
                raise PoddError(f"malformed line {n} in {path}: {line.strip()!r}")
            rows.append(parts)
    return rows


def _cub_source(root: Path, size: tuple[int, int]) -> _Source:
    """CUB-200-2011 from the official archive layout <root>/CUB_200_2011/."""
    folder = root / "CUB_200_2011"
    needed = ["images", "images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"]
    missing = [n for n in needed if not (folder / n).exists()]
    if missing:
        raise PoddError(f"CUB-200-2011 not found in {folder} (missing {', '.join(missing)}); download "
                        f"CUB_200_2011.tgz (https://www.vision.caltech.edu/datasets/cub_200_2011/) and "
                        f"extract it into {root}/")

    def load(tpc: int | None, vpc: int | None, size: tuple[int, int]) -> RawData:
        try:
            class_rows = _read_table(folder / "classes.txt", 2)
            images = dict(_read_table(folder / "images.txt", 2))
            labels = {k: int(v) for k, v in _read_table(folder / "image_class_labels.txt", 2)}
            is_train = {k: v.strip() == "1" for k, v in _read_table(folder / "train_test_split.txt", 2)}
            class_ids = [int(cid) for cid, _ in class_rows]
        except ValueError as exc:
            raise PoddError(f"malformed CUB index file in {folder}: {exc}") from None
        label_of = {cid: i for i, cid in enumerate(class_ids)}
        names = [re.sub(r"^\d+\.", "", n.strip()).replace("_", " ") for _, n in class_rows]
        ids = sorted(images, key=lambda k: int(k) if k.isdigit() else k)
        unknown = [k for k in ids if k not in labels or k not in is_train or labels[k] not in label_of]
        if unknown:
            raise PoddError(f"CUB image id {unknown[0]} in {folder / 'images.txt'} has no label or split entry")
        splits = []
        for want, k in ((True, tpc), (False, vpc)):
            chosen = [i for i in ids if is_train[i] == want]
            y = np.asarray([label_of[labels[i]] for i in chosen], dtype=np.int64)
            idx = _first_per_class(y, k)
            splits.append(_Split([folder / "images" / images[chosen[j]].strip() for j in idx], y[idx]))
        x = _decode_images(splits[0].paths + splits[1].paths, size)
        n = len(splits[0].paths)
        return RawData("cub200", x[:n], splits[0].labels, x[n:], splits[1].labels, names, str(folder))
    return _Source("cub200", folder, [folder / n for n in needed], size, load)


def _tiny_source(root: Path, size: tuple[int, int]) -> _Source:
    """Tiny-ImageNet raw layout <root>/tiny-imagenet-200/; classes in sorted wnid order, val = test."""
    folder = root / "tiny-imagenet-200"
    needed = ["wnids.txt", "words.txt", "train", "val/images", "val/val_annotations.txt"]
    missing = [n for n in needed if not (folder / n).exists()]
    if missing:
        raise PoddError(f"Tiny-ImageNet not found in {folder} (missing {', '.join(missing)}); download "
                        f"http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into {root}/")

    def load(tpc: int | None, vpc: int | None, size: tuple[int, int]) -> RawData:
        wnids = sorted({w.strip() for w in (folder / "wnids.txt").read_text(encoding="utf-8").split()})
        words: dict[str, str] = {}
        for line in (folder / "words.txt").read_text(encoding="utf-8").splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid.strip()] = text.split(",")[0].strip()
        label_of = {w: i for i, w in enumerate(wnids)}
        tr_paths: list[Path] = []
        tr_labels: list[int] = []
        for w in wnids:
            d = folder / "train" / w / "images"
            files = _list_images(d) if d.is_dir() else []
            files = files[:tpc] if tpc is not None else files
            tr_paths += files
            tr_labels += [label_of[w]] * len(files)
        val = []
        for n, line in enumerate((folder / "val" / "val_annotations.txt").read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split("\t")
            if len(parts) < 2 or parts[1].strip() not in label_of:
                if line.strip():
                    raise PoddError(f"malformed line {n} in {folder / 'val' / 'val_annotations.txt'}: {line.strip()!r}")
                continue
            val.append((parts[0].strip(), label_of[parts[1].strip()]))
        val.sort()
        y_val = np.asarray([lab for _, lab in val], dtype=np.int64)
        idx = _first_per_class(y_val, vpc)
        te_paths = [folder / "val" / "images" / val[i][0] for i in idx]
        if not tr_paths or not te_paths:
            raise PoddError(f"Tiny-ImageNet: no images found under {folder}/train/<wnid>/images or {folder}/val/images")
        x = _decode_images(tr_paths + te_paths, size)
        n = len(tr_paths)
        names = [words.get(w, w) for w in wnids]
        return RawData("tinyimagenet", x[:n], np.asarray(tr_labels, dtype=np.int64), x[n:], y_val[idx],
                       names, str(folder))
    return _Source("tinyimagenet", folder, [folder / n for n in needed], size, load)


def _known_names() -> str:
    """The list of accepted dataset names for error messages."""
    return ", ".join(DATASETS) + ", imagefolder:<path>, or <name> with <root>/<name>/{train,test}/<class>/"


def _locate(name: str, root: Path, size: tuple[int, int] | None, download: bool) -> _Source:
    """Find the dataset called name under root (or at an imagefolder: path)."""
    if name in ("cifar10", "cifar100"):
        return _cifar_source(name, root, size or _DEFAULT_SIZES[name], download)
    if name == "cub200":
        return _cub_source(root, size or _DEFAULT_SIZES[name])
    if name == "tinyimagenet":
        return _tiny_source(root, size or _DEFAULT_SIZES[name])
    if name.startswith("imagefolder:"):
        path = Path(name[len("imagefolder:"):]).expanduser()
        if not str(path) or not _is_imagefolder(path):
            raise PoddError(f"ImageFolder not found at {path} (expected {path}/train/<class>/<image> and "
                            f"{path}/test/<class>/<image>)")
        return _imagefolder_source(name, path, size)
    if name and not name.startswith(".") and _is_imagefolder(root / name):
        return _imagefolder_source(name, root / name, size)
    raise PoddError(f"unknown dataset {name!r} (no folder {root / name}/{{train,test}}); known: {_known_names()}")


# ----------------------------------------------------------------------------- caching

def _cache_path(root: Path, name: str, kind: str, key: dict[str, Any]) -> Path:
    """<root>/.podd_cache/<safe name>-<kind>-<hash of key>.npz."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", name.split(":", 1)[-1] if ":" in name else name).strip("-")[-40:]
    prefix = f"imagefolder-{safe}" if name.startswith("imagefolder:") else safe
    return root / CACHE_DIRNAME / f"{prefix or 'data'}-{kind}-{digest}.npz"


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """Arrays of a cache file, or None when absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception:
        warnings.warn(f"ignoring unreadable cache file {path}")
        return None


def _write_cache(path: Path, **arrays: Any) -> None:
    """Write a cache file atomically; a read-only data root only costs a warning."""
    try:
        atomic_numpy_savez(path, **arrays)
    except OSError as exc:
        warnings.warn(f"could not write cache file {path}: {exc}")


def _raw_key(source: _Source, tpc: int | None, vpc: int | None) -> dict[str, Any]:
    """Cache identity of the decoded arrays."""
    return {"version": CACHE_VERSION, "name": source.name, "source": str(source.folder.resolve()),
            "fingerprint": source.fingerprint(), "train_per_class": tpc, "test_per_class": vpc,
            "image_size": list(source.size) if source.size else None}


# ----------------------------------------------------------------------------- entry points

def _check_options(name: Any, train_per_class: Any, test_per_class: Any, image_size: Any,
                   zca_reg: Any) -> tuple[int, int] | None:
    """Validate load options (raises PoddError) and return image_size as (H, W) or None."""
    if not isinstance(name, str) or not name:
        raise PoddError(f"dataset name must be a non-empty string; known: {_known_names()}")
    for label, k in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise PoddError(f"{label} must be a positive integer or None, got {k!r}")
    if not isinstance(zca_reg, (int, float)) or isinstance(zca_reg, bool) or not zca_reg > 0:
        raise PoddError(f"zca_reg must be a positive number, got {zca_reg!r}")
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise PoddError(f"image_size must be a positive int or (H, W), got {image_size!r}")
    return size  # type: ignore[return-value]


def load_raw(name: str, data_root: str | os.PathLike | None = None, download: bool = False,
             train_per_class: int | None = None, test_per_class: int | None = None,
             image_size: int | tuple[int, int] | None = None, cache: bool = True) -> RawData:
    """Decoded uint8 (N, C, H, W) arrays of a dataset, from the on-disk cache when possible."""
    size = _check_options(name, train_per_class, test_per_class, image_size, DEFAULT_ZCA_REG)
    return _load_raw(name, resolve_data_root(data_root), download, train_per_class, test_per_class, size, cache)[0]


def _load_raw(name: str, root: Path, download: bool, tpc: int | None, vpc: int | None,
              size: tuple[int, int] | None, cache: bool) -> tuple[RawData, dict[str, Any]]:
    """load_raw after validation; also returns the cache key of the decoded arrays."""
    source = _locate(name, root, size, download)
    key = _raw_key(source, tpc, vpc)
    path = _cache_path(root, name, "raw", key)
    hit = _read_cache(path) if cache else None
    if hit is not None:
        return RawData(name, hit["x_train"], hit["y_train"], hit["x_test"], hit["y_test"],
                       [str(c) for c in hit["classes"]], str(hit["source"])), key
    raw = source.loader(tpc, vpc, source.size)
    raw.name = name
    key = _raw_key(source, tpc, vpc)  # a download just now changes the fingerprint
    path = _cache_path(root, name, "raw", key)
    if cache:
        _write_cache(path, x_train=raw.x_train, y_train=raw.y_train, x_test=raw.x_test, y_test=raw.y_test,
                     classes=np.asarray(raw.classes, dtype=str), source=np.asarray(raw.source))
    return raw, key


def _fit_zca_cached(raw: RawData, root: Path, raw_key: dict[str, Any], strength: float, cache: bool) -> ZCA:
    """fit_zca on raw.x_train, reusing the cached eigendecomposition when present."""
    key = {"raw": raw_key, "kind": "zca", "strength": strength, "shape": list(raw.x_train.shape[1:])}
    path = _cache_path(root, raw.name, "zca", key)
    hit = _read_cache(path) if cache else None
    if hit is not None:
        return ZCA(torch.from_numpy(hit["eigvecs"]), torch.from_numpy(hit["eigvals"]), float(hit["reg"]),
                   tuple(int(s) for s in hit["image_shape"]))
    zca = fit_zca(raw.x_train, strength)
    if cache:
        _write_cache(path, eigvecs=zca.eigvecs.numpy(), eigvals=zca.eigvals.numpy(), reg=np.float64(zca.reg),
                     image_shape=np.asarray(zca.image_shape, dtype=np.int64))
    return zca


def load_dataset(name: str, data_root: str | os.PathLike | None = None, zca: bool = True,
                 download: bool = False, train_per_class: int | None = None,
                 test_per_class: int | None = None, cache: bool = True,
                 image_size: int | tuple[int, int] | None = None,
                 zca_reg: float = DEFAULT_ZCA_REG) -> RealData:
    """Load, decode (cached), preprocess (ZCA or per-channel mean/std) and return a RealData."""
    size = _check_options(name, train_per_class, test_per_class, image_size, zca_reg)
    root = resolve_data_root(data_root)
    raw, raw_key = _load_raw(name, root, download, train_per_class, test_per_class, size, cache)
    if zca:
        pre: Preprocessor = _fit_zca_cached(raw, root, raw_key, float(zca_reg), cache)
    else:
        pre = fit_meanstd(raw.x_train)
    return RealData(
        name=name,
        x_train=pre.apply(raw.x_train),
        y_train=torch.from_numpy(np.ascontiguousarray(raw.y_train, dtype=np.int64)),
        x_test=pre.apply(raw.x_test),
        y_test=torch.from_numpy(np.ascontiguousarray(raw.y_test, dtype=np.int64)),
        classes=list(raw.classes),
        image_size=(int(raw.x_train.shape[2]), int(raw.x_train.shape[3])),
        channels=int(raw.x_train.shape[1]),
        preprocess=pre,
    )
