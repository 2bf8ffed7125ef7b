"""Where real images come from: CIFAR-10/100, CUB-200-2011, Tiny-ImageNet or any ImageFolder, decoded to uint8."""

from __future__ import annotations

import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from podd_lib.errors import PoddError

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "cub200", "tinyimagenet")
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
_DEFAULT_SIZES: dict[str, tuple[int, int]] = {
    "cifar10": (32, 32), "cifar100": (32, 32), "cub200": (32, 32), "tinyimagenet": (64, 64),
}
_FALLBACK_SIZE = (32, 32)


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
    """Sorted class folder names of an ImageFolder split (each printable text: it names the class everywhere)."""
    from podd_lib.safety import check_name

    names = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    return [check_name(n, "class folder", split_dir) for n in names]


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


