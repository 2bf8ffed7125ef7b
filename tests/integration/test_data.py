"""Tests for podd_lib.data: loaders on tiny generated layouts, preprocessing, caching, real CIFAR-10."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from podd_lib import data as D
from podd_lib.errors import PoddError


# ----------------------------------------------------------------------------- helpers

def _image(seed: int, size: tuple[int, int] = (8, 8)) -> np.ndarray:
    """A deterministic (H, W, 3) uint8 test image."""
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _save(path: Path, arr: np.ndarray) -> None:
    """Write arr as an image file (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _imagefolder(root: Path, classes: list[str], n_train: int, n_test: int,
                 size: tuple[int, int] = (8, 8), ext: str = ".png") -> dict[tuple[str, str, int], np.ndarray]:
    """Create root/{train,test}/<class>/NNN<ext>; return the written arrays by (split, class, index)."""
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        for ci, cls in enumerate(classes):
            for i in range(n):
                arr = _image((split == "test") * 100_000 + 1000 * ci + i, size)
                _save(root / split / cls / f"{i:03d}{ext}", arr)
                written[(split, cls, i)] = arr
    return written


def _fake_cub(root: Path, n_classes: int = 3, per_class: int = 4) -> Path:
    """A tiny CUB_200_2011 layout: half of each class train, half test, non-square JPEGs."""
    folder = root / "CUB_200_2011"
    folder.mkdir(parents=True)
    classes, images, labels, split = [], [], [], []
    image_id = 0
    for c in range(1, n_classes + 1):
        cname = f"{c:03d}.Bird_Number_{c}"
        classes.append(f"{c} {cname}")
        for i in range(per_class):
            image_id += 1
            rel = f"{cname}/Bird_Number_{c}_{i:04d}_{image_id}.jpg"
            _save(folder / "images" / rel, _image(image_id, (20 + c, 30)))
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {1 if i % 2 == 0 else 0}")
    for name, lines in (("classes.txt", classes), ("images.txt", images),
                        ("image_class_labels.txt", labels), ("train_test_split.txt", split)):
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def _fake_tiny(root: Path, wnids: tuple[str, ...] = ("n0300", "n0100", "n0200"),
               n_train: int = 3, n_val: int = 2) -> Path:
    """A tiny tiny-imagenet-200 layout (64x64 JPEGs, words.txt with several names per line)."""
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text(
        "".join(f"{w}\tthing {w[-3:]}, other name, third\n" for w in wnids) + "n9999\tunused\n")
    annotations = []
    k = 0
    for wi, w in enumerate(wnids):
        for i in range(n_train):
            _save(folder / "train" / w / "images" / f"{w}_{i}.JPEG", _image(100 * wi + i, (64, 64)))
        for i in range(n_val):
            name = f"val_{k}.JPEG"
            _save(folder / "val" / "images" / name, np.full((64, 64, 3), 10 + 40 * k, dtype=np.uint8))
            annotations.append(f"{name}\t{w}\t0\t0\t63\t63")
            k += 1
    (folder / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    return folder


def _smooth_images(n: int, c: int = 3, h: int = 4, w: int = 4, seed: int = 0) -> torch.Tensor:
    """Correlated uint8 images (blurred noise plus a per-image offset), so the spectrum is far from flat."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, c, h + 2, w + 2, generator=g)
    blur = torch.nn.functional.avg_pool2d(noise, 3, stride=1)
    x = 0.6 * blur + 0.3 * torch.rand(n, 1, 1, 1, generator=g) + 0.05 * torch.rand(n, c, h, w, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


# ----------------------------------------------------------------------------- data root

def test_resolve_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PODD_DATA_ROOT", raising=False)
    assert D.resolve_data_root(None) == Path("data")
    monkeypatch.setenv("PODD_DATA_ROOT", str(tmp_path))
    assert D.resolve_data_root(None) == tmp_path
    assert D.resolve_data_root(tmp_path / "x") == tmp_path / "x"


# ----------------------------------------------------------------------------- loaders

def test_imagefolder_by_path_exact_pixels_and_sorted_classes(tmp_path: Path) -> None:
    written = _imagefolder(tmp_path / "set", ["zebra", "ant", "moth"], n_train=3, n_test=2)
    raw = D.load_raw(f"imagefolder:{tmp_path / 'set'}", data_root=tmp_path, cache=False)
    assert raw.classes == ["ant", "moth", "zebra"]
    assert raw.x_train.shape == (9, 3, 8, 8) and raw.x_train.dtype == np.uint8
    assert raw.x_test.shape == (6, 3, 8, 8)
    assert raw.y_train.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and raw.y_test.tolist() == [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(raw.x_train[3].transpose(1, 2, 0), written[("train", "moth", 0)])
    np.testing.assert_array_equal(raw.x_test[5].transpose(1, 2, 0), written[("test", "zebra", 1)])


def test_imagefolder_by_name_under_root_and_realdata_fields(tmp_path: Path) -> None:
    _imagefolder(tmp_path / "toy", ["a", "b"], n_train=4, n_test=2, ext=".jpg")
    d = D.load_dataset("toy", data_root=tmp_path, zca=False, cache=False)
    assert d.name == "toy" and d.num_classes == 2 and d.channels == 3 and d.image_size == (8, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.x_train.shape == (8, 3, 8, 8) and d.x_test.shape == (4, 3, 8, 8)
    assert d.preprocess.kind == "meanstd"


def test_imagefolder_mixed_sizes_go_to_32_and_image_size_option(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    _save(root / "train" / "a" / "0.png", _image(1, (10, 12)))
    _save(root / "train" / "b" / "0.png", _image(2, (40, 40)))
    _save(root / "test" / "a" / "0.png", _image(3, (10, 12)))
    _save(root / "test" / "b" / "0.png", _image(4, (10, 12)))
    assert D.load_raw(f"imagefolder:{root}", data_root=tmp_path, cache=False).x_train.shape == (2, 3, 32, 32)
    raw = D.load_raw(f"imagefolder:{root}", data_root=tmp_path, cache=False, image_size=(16, 20))
    assert raw.x_train.shape == (2, 3, 16, 20) and raw.x_test.shape == (2, 3, 16, 20)


def test_subset_takes_first_k_per_class(tmp_path: Path) -> None:
    written = _imagefolder(tmp_path / "set", ["a", "b", "c"], n_train=5, n_test=3)
    raw = D.load_raw(f"imagefolder:{tmp_path / 'set'}", data_root=tmp_path, cache=False,
                     train_per_class=2, test_per_class=1)
    assert raw.y_train.tolist() == [0, 0, 1, 1, 2, 2] and raw.y_test.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(raw.x_train[3].transpose(1, 2, 0), written[("train", "b", 1)])


def test_cifar10_imagefolder_copy_uses_canonical_class_order(tmp_path: Path) -> None:
    _imagefolder(tmp_path / "cifar10", list(D.CIFAR10_CLASSES), n_train=1, n_test=1, size=(32, 32), ext=".jpg")
    raw = D.load_raw("cifar10", data_root=tmp_path, cache=False)
    assert raw.classes == list(D.CIFAR10_CLASSES)
    assert raw.x_train.shape == (10, 3, 32, 32) and raw.y_train.tolist() == list(range(10))


def test_cifar100_torchvision_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cifar100" / "cifar-100-python").mkdir(parents=True)
    seen = []

    class FakeCIFAR100:
        """Stands in for torchvision's CIFAR100 (HWC uint8 data, targets, classes)."""

        def __init__(self, root: str, train: bool, download: bool) -> None:
            seen.append((root, train, download))
            n = 6 if train else 3
            self.data = np.stack([np.full((32, 32, 3), 10 * i, dtype=np.uint8) for i in range(n)])
            self.targets = [i % 3 for i in range(n)]
            self.classes = ["apple", "aquarium_fish", "bear"]

    fake = types.ModuleType("torchvision")  # importing the real one takes seconds
    fake.datasets = types.SimpleNamespace(CIFAR100=FakeCIFAR100)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    raw = D.load_raw("cifar100", data_root=tmp_path, cache=False, train_per_class=1)
    assert seen[0] == (str(tmp_path / "cifar100"), True, False)
    assert raw.classes == ["apple", "aquarium fish", "bear"]
    assert raw.x_train.shape == (3, 3, 32, 32) and raw.y_train.tolist() == [0, 1, 2]
    assert raw.x_train[:, :, 0, 0].tolist() == [[0] * 3, [10] * 3, [20] * 3]
    assert raw.x_test.shape == (3, 3, 32, 32)


def test_cifar10_copy_with_wrong_classes_is_rejected(tmp_path: Path) -> None:
    _imagefolder(tmp_path / "cifar10", ["cat", "dog"], n_train=1, n_test=1)
    with pytest.raises(PoddError, match="expected classes|not the 10 expected"):
        D.load_raw("cifar10", data_root=tmp_path, cache=False)


def test_cub_layout(tmp_path: Path) -> None:
    _fake_cub(tmp_path)
    d = D.load_dataset("cub200", data_root=tmp_path, zca=False, cache=False)
    assert d.classes == ["Bird Number 1", "Bird Number 2", "Bird Number 3"]
    assert d.x_train.shape == (6, 3, 32, 32) and d.x_test.shape == (6, 3, 32, 32)
    assert d.y_train.tolist() == [0, 0, 1, 1, 2, 2] and d.y_test.tolist() == [0, 0, 1, 1, 2, 2]
    sub = D.load_raw("cub200", data_root=tmp_path, cache=False, train_per_class=1)
    assert sub.y_train.tolist() == [0, 1, 2] and sub.x_test.shape[0] == 6


def test_tinyimagenet_layout(tmp_path: Path) -> None:
    _fake_tiny(tmp_path)
    raw = D.load_raw("tinyimagenet", data_root=tmp_path, cache=False)
    assert raw.classes == ["thing 100", "thing 200", "thing 300"]  # sorted wnids, first name in words.txt
    assert raw.x_train.shape == (9, 3, 64, 64) and raw.x_test.shape == (6, 3, 64, 64)
    assert raw.y_train.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert sorted(raw.y_test.tolist()) == [0, 0, 1, 1, 2, 2]
    # val_0/val_1 (flat grey 10 and 50) belong to wnids[0] = n0300, i.e. label 2 after sorting
    np.testing.assert_allclose(raw.x_test[raw.y_test == 2].mean((1, 2, 3)), [10, 50], atol=2)


@pytest.mark.parametrize("name, needle", [
    ("cifar10", "cifar10"), ("cifar100", "cifar100"), ("cub200", "CUB_200_2011"),
    ("tinyimagenet", "tiny-imagenet-200"), ("imagefolder:/nonexistent/set", "/nonexistent/set"),
])
def test_missing_data_is_one_line_with_path(tmp_path: Path, name: str, needle: str) -> None:
    with pytest.raises(PoddError) as info:
        D.load_dataset(name, data_root=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and needle in msg
    if name.startswith("cifar"):
        assert str(tmp_path / name) in msg and "without --no-download" in msg and "{train,test}" in msg


def test_unknown_dataset_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(PoddError) as info:
        D.load_dataset("mnist", data_root=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and "mnist" in msg
    assert all(n in msg for n in D.DATASETS) and "imagefolder:" in msg


@pytest.mark.parametrize("kwargs", [{"train_per_class": 0}, {"test_per_class": -1}, {"image_size": (0, 4)},
                                    {"zca_reg": 0.0}, {"train_per_class": 1.5}])
def test_bad_options_rejected_early(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(PoddError):
        D.load_dataset("cifar10", data_root=tmp_path, **kwargs)


@pytest.mark.parametrize("content", [b"this is not an image", "truncated"])
def test_corrupt_image_error_names_file(tmp_path: Path, content: bytes | str) -> None:
    _imagefolder(tmp_path / "set", ["a", "b"], n_train=2, n_test=1, ext=".jpg")
    bad = tmp_path / "set" / "train" / "b" / "001.jpg"
    bad.write_bytes(content if isinstance(content, bytes) else bad.read_bytes()[:200])
    with pytest.raises(PoddError) as info:
        D.load_raw(f"imagefolder:{tmp_path / 'set'}", data_root=tmp_path, cache=False)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- caching

def test_second_load_hits_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _imagefolder(tmp_path / "set", ["a", "b"], n_train=6, n_test=2)
    name = f"imagefolder:{tmp_path / 'set'}"
    first = D.load_dataset(name, data_root=tmp_path, zca=True)
    files = sorted(p.name for p in (tmp_path / D.CACHE_DIRNAME).iterdir())
    assert any("-raw-" in f for f in files) and any("-zca-" in f for f in files)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("recomputed despite the cache")
    monkeypatch.setattr(D.sources, "_decode_images", boom)
    monkeypatch.setattr(D.zca, "_eigh", boom)
    second = D.load_dataset(name, data_root=tmp_path, zca=True)
    torch.testing.assert_close(second.x_train, first.x_train, rtol=0, atol=1e-6)
    torch.testing.assert_close(second.x_test, first.x_test, rtol=0, atol=1e-6)
    assert second.classes == first.classes
    with pytest.raises(AssertionError, match="recomputed"):  # subset is part of the key
        D.load_dataset(name, data_root=tmp_path, zca=True, train_per_class=3)
    with pytest.raises(AssertionError, match="recomputed"):  # the ZCA strength is part of the key
        D.load_dataset(name, data_root=tmp_path, zca=True, zca_reg=0.2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        with pytest.raises(AssertionError, match="recomputed"):  # so is the thread count (the ZCA's last bits)
            D.load_dataset(name, data_root=tmp_path, zca=True)
    finally:
        torch.set_num_threads(threads)


def test_cache_false_writes_nothing(tmp_path: Path) -> None:
    _imagefolder(tmp_path / "set", ["a", "b"], n_train=2, n_test=1)
    D.load_dataset(f"imagefolder:{tmp_path / 'set'}", data_root=tmp_path, zca=True, cache=False)
    assert not (tmp_path / D.CACHE_DIRNAME).exists()


# ----------------------------------------------------------------------------- preprocessing

def test_zca_whitens_and_inverts() -> None:
    x = _smooth_images(600)
    zca = D.fit_zca(x, strength=0.1)
    white = zca.apply(x).reshape(600, -1).double()
    e = zca.eigvals
    # second moment of the whitened data is V diag(e / (e + reg)) V^T: every eigenvalue below 1,
    # the large ones close to 1, the small ones shrunk the most
    got = torch.linalg.eigvalsh(white.T @ white / 600)
    want = torch.sort(e / (e + zca.reg)).values
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
    assert got.max() < 1 and got.min() < 0.5 * got.max()
    assert zca.reg == pytest.approx(0.1 * float(e.mean()))
    torch.testing.assert_close(zca.inverse(zca.apply(x)), zca.normalize(x), rtol=0, atol=1e-4)
    norm = zca.normalize(x).reshape(600, -1)
    torch.testing.assert_close(norm.mean(1), torch.zeros(600), rtol=0, atol=1e-6)
    torch.testing.assert_close(norm.norm(dim=1), torch.ones(600), rtol=0, atol=1e-5)


def test_zca_apply_accepts_uint8_or_unit_float_and_checks_shape() -> None:
    x = _smooth_images(50)
    zca = D.fit_zca(x)
    torch.testing.assert_close(zca.apply(x), zca.apply(x.float() / 255), rtol=0, atol=1e-5)
    torch.testing.assert_close(zca.apply(x.numpy()), zca.apply(x))
    with pytest.raises(PoddError):
        zca.apply(torch.zeros(2, 3, 5, 5))


def test_preprocessor_state_dict_round_trip(tmp_path: Path) -> None:
    x = _smooth_images(80)
    for pre in (D.fit_zca(x), D.fit_meanstd(x)):
        path = tmp_path / f"{pre.kind}.pt"
        torch.save(pre.state_dict(), path)
        back = D.Preprocessor.from_state_dict(torch.load(path))
        assert back.kind == pre.kind
        torch.testing.assert_close(back.apply(x), pre.apply(x))
        torch.testing.assert_close(back.inverse(pre.apply(x)), pre.inverse(pre.apply(x)))
    with pytest.raises(PoddError):
        D.Preprocessor.from_state_dict({"kind": "pca"})


def test_meanstd_stats_and_exact_inverse() -> None:
    x = _smooth_images(40)
    pre = D.fit_meanstd(x)
    unit = x.double() / 255
    torch.testing.assert_close(pre.mean, unit.mean((0, 2, 3)))
    torch.testing.assert_close(pre.std, unit.std((0, 2, 3), unbiased=False))
    y = pre.apply(x)
    torch.testing.assert_close(y.double().mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(pre.inverse(y), x.float() / 255, rtol=0, atol=1e-6)
    poster = torch.randn(3, 9, 13)
    torch.testing.assert_close(pre.inverse_poster(poster), pre.inverse(poster[None])[0])


def test_zca_inverse_poster() -> None:
    zca = D.fit_zca(_smooth_images(300))
    patch = torch.randn(1, 3, 4, 4)
    # a poster of exactly one image is just the image inverse
    torch.testing.assert_close(zca.inverse_poster(patch[0]), zca.inverse(patch)[0])
    poster = torch.randn(3, 11, 7)
    out = zca.inverse_poster(poster, (4, 4))
    assert out.shape == poster.shape and torch.isfinite(out).all()
    # windows at offsets (0, 2, 4, 6, 7) x (0, 2, 3): the top-left 2x2 corner is covered by one window only
    torch.testing.assert_close(out[:, :2, :2], zca.inverse(poster[None, :, :4, :4])[0, :, :2, :2])
    with pytest.raises(PoddError):
        zca.inverse_poster(torch.randn(3, 3, 9))
    with pytest.raises(PoddError):
        zca.inverse_poster(poster, (8, 8))


def test_zca_inverse_poster_with_flat_spectrum_is_a_pointwise_scale() -> None:
    d = 3 * 4 * 4
    zca = D.ZCA(torch.eye(d), torch.full((d,), 0.5), 0.25, (3, 4, 4))
    poster = torch.randn(3, 10, 9)
    torch.testing.assert_close(zca.inverse_poster(poster, stride=1), poster * 0.75 ** 0.5)


def test_to_display_range() -> None:
    x = torch.randn(5, 3, 4, 4) * 7 + 3
    out = D.to_display(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out.reshape(5, -1).amin(1), torch.zeros(5))
    torch.testing.assert_close(out.reshape(5, -1).amax(1), torch.ones(5))
    assert D.to_display(torch.randn(3, 10, 20)).max() == 1
    assert torch.all(D.to_display(torch.ones(1, 3, 2, 2)) == 0.5)


# ----------------------------------------------------------------------------- real CIFAR-10

@pytest.mark.realdata
def test_real_cifar10_subset(cifar10_root: Path) -> None:
    d = D.load_dataset("cifar10", data_root=cifar10_root, zca=False, train_per_class=50, test_per_class=20,
                       cache=False)
    assert d.x_train.shape == (500, 3, 32, 32) and d.x_test.shape == (200, 3, 32, 32)
    assert d.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert torch.bincount(d.y_train).tolist() == [50] * 10 and torch.bincount(d.y_test).tolist() == [20] * 10
    means = d.preprocess.mean.tolist()  # channel means of the raw uint8 training pixels, in [0, 1]
    for got, want in zip(means, (0.49, 0.48, 0.45)):
        assert abs(got - want) < 0.05, means
    raw = D.load_raw("cifar10", data_root=cifar10_root, train_per_class=50, test_per_class=20, cache=False)
    assert raw.x_train.dtype == np.uint8
    np.testing.assert_allclose(raw.x_train.mean((0, 2, 3)) / 255, means, atol=1e-9)
    torch.testing.assert_close(d.preprocess.inverse(d.x_train), torch.from_numpy(raw.x_train).float() / 255,
                               rtol=0, atol=1e-5)


@pytest.mark.realdata
def test_real_cifar10_zca_round_trip(cifar10_root: Path) -> None:
    d = D.load_dataset("cifar10", data_root=cifar10_root, zca=True, train_per_class=20, test_per_class=5,
                       cache=False)
    assert d.preprocess.kind == "zca" and d.x_train.shape == (200, 3, 32, 32)
    raw = D.load_raw("cifar10", data_root=cifar10_root, train_per_class=20, test_per_class=5, cache=False)
    zca = d.preprocess
    assert isinstance(zca, D.ZCA)
    torch.testing.assert_close(zca.inverse(d.x_test), zca.normalize(raw.x_test), rtol=0, atol=1e-4)
    torch.testing.assert_close(zca.inverse(d.x_train), zca.normalize(raw.x_train), rtol=0, atol=1e-4)
