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

    sources -- finding and decoding each dataset's files
    zca     -- the preprocessors (ZCA, mean/std) and their inverses
    cache   -- the on-disk cache
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from podd_lib.errors import PoddError
from podd_lib.data.cache import (CACHE_DIRNAME, CACHE_VERSION, _cache_path, _raw_key, _read_cache,  # noqa: F401
                                 _write_cache)
from podd_lib.data.sources import (CIFAR10_CLASSES, DATASETS, IMAGE_EXTENSIONS, RawData, _known_names,  # noqa: F401
                                   imagefolder_classes,
                                   _locate)
from podd_lib.data.zca import (DEFAULT_ZCA_REG, MeanStd, Preprocessor, ZCA, fit_meanstd, fit_zca,  # noqa: F401
                               normalize_per_image, second_moment, to_display, window_offsets)

if TYPE_CHECKING:
    from ..config import Config


# ----------------------------------------------------------------------------- data root

def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The data root: the argument, else $PODD_DATA_ROOT, else ./data."""
    if data_root is not None and str(data_root) != "":
        return Path(data_root).expanduser()
    env = os.environ.get("PODD_DATA_ROOT", "")
    return Path(env).expanduser() if env else Path("data")


# ----------------------------------------------------------------------------- containers

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
    """fit_zca on raw.x_train, reusing the cached eigendecomposition when present.

    The last bits of the decomposition depend on torch's thread count (the second moment's products
    and the eigensolver split their sums by thread), so a cached one is reused only at the count it
    was computed at: a run's bits then depend on its thread count alone, not on which run came first.
    """
    key = {"raw": raw_key, "kind": "zca", "strength": strength, "shape": list(raw.x_train.shape[1:]),
           "threads": torch.get_num_threads()}
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


def data_source(cfg: Config) -> str:
    """The dataset a config reads: imagefolder:ABSOLUTE for an ImageFolder whose location it recorded, else its name.

    An ImageFolder given by a relative path keeps that path as its name (in the run key) and its
    absolute location in dataset_path, so its run loads the same data from any working directory.
    """
    name = str(cfg.dataset)
    if name.startswith("imagefolder:") and cfg.dataset_path:
        return f"imagefolder:{cfg.dataset_path}"
    return name


def zca_for_config(cfg: Config, data_root: str | os.PathLike | None = None) -> ZCA:
    """The ZCA whitening a run's config was made with, from its training data (both cached on disk); no download."""
    name = data_source(cfg)
    size = tuple(cfg.image_size) if name.startswith("imagefolder:") and cfg.image_size else None
    reg = float(cfg.zca_reg)
    tpc, vpc = cfg.train_per_class or None, cfg.test_per_class or None
    size = _check_options(name, tpc, vpc, size, reg)
    root = resolve_data_root(data_root)
    raw, raw_key = _load_raw(name, root, False, tpc, vpc, size, True)
    return _fit_zca_cached(raw, root, raw_key, reg, True)


def load_for_config(cfg: Config, data_root: str | os.PathLike | None = None, download: bool = True) -> RealData:
    """The real data a run's config asks for: its dataset, slices, ZCA and regulariser (and size, for ImageFolder)."""
    name = data_source(cfg)
    size = tuple(cfg.image_size) if name.startswith("imagefolder:") and cfg.image_size else None
    return load_dataset(name, data_root=data_root, zca=cfg.zca, download=download,
                        train_per_class=cfg.train_per_class or None, test_per_class=cfg.test_per_class or None,
                        image_size=size, zca_reg=float(cfg.zca_reg))


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
