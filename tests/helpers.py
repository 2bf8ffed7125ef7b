"""Builders shared by the unit and integration tests: tiny data, tiny configs, tiny image folders.

Test modules import from here (`from tests.helpers import ...`; pytest's `pythonpath = ["."]` puts
the repository root on sys.path), never from one another.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from podd_lib.config import resolve_config

# A fixed curriculum order for the 10 classes of a 5x2 poster.
ORDER = [[9, 0, 2, 4, 3], [1, 8, 6, 7, 5]]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def fake_real(n_per_class: int = 6, seed: int = 0) -> SimpleNamespace:
    """A CIFAR-10-shaped stand-in for the real data: random 32x32 images whose mean shifts with the class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(10).repeat_interleave(n_per_class)
    x = torch.randn(len(y), 3, 32, 32, generator=g) + y.view(-1, 1, 1, 1) * 0.1
    return SimpleNamespace(x_train=x, y_train=y, x_test=x[:20], y_test=y[:20], classes=list(CIFAR10_CLASSES),
                           image_size=(32, 32), channels=3)


def tiny_cfg(**over):
    """The smoke profile at 0.5 IPC on CIFAR-10, shrunk to a few steps of a width-4 ConvNet; `over` overrides."""
    base = {"width": 4, "steps": 4, "checkpoint_every": 1, "bs": 16, "patch_grid": [6, 2]}
    base.update(over)
    return resolve_config("cifar10", 0.5, "smoke", base)


def make_imagefolder(root: Path, n_classes: int = 4, per_class: int = 6, empty_train: tuple[str, ...] = ()) -> Path:
    """A tiny ImageFolder of 32x32 PNGs: root/{train,test}/class<c>/<i>.png."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 2)):
        for c in range(n_classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            if split == "train" and d.name in empty_train:
                continue
            for i in range(n):
                Image.fromarray((rng.random((32, 32, 3)) * 80 + c * 40).astype(np.uint8)).save(d / f"{i}.png")
    return root


def small_meta_grad(net: torch.nn.Module, channels: int) -> torch.Tensor:
    """The flat meta-gradient (poster, then Y) of one float32 channels-last RaT-BPTT step on a 2-class 8x8 poster."""
    from podd_lib.algorithms.base import RealSampler, SyntheticSet
    from podd_lib.algorithms.ratbptt import RatBptt, RatBpttSettings
    from podd_lib.poddl import PosterLabels
    from podd_lib.poster import make_geometry

    geom = make_geometry(1.0, 2, (8, 8), (2, 1), (3, 1))
    labels = PosterLabels([[0, 1]], geom, learned=True)
    s = RatBpttSettings(window=3, totwindow=5, bs_d=3, bs=24, inner_lr=0.01, real_chunk=10, channels_last=True)
    poster = torch.randn(channels, 8, 16, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    Y = labels.Y.clone().requires_grad_(True)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(40, channels, 8, 8, generator=g), torch.randint(0, 2, (40,), generator=g)
    loss, _ = RatBptt(net, s).meta_loss(SyntheticSet(poster, Y, labels, geom), RealSampler(x, y, 2),
                                        torch.Generator().manual_seed(3), 0)
    return torch.cat([t.flatten() for t in torch.autograd.grad(loss, (poster, Y))])


REPO_ROOT = Path(__file__).resolve().parents[1]
CIFAR10_ZIP = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"


def download_cache() -> Path:
    """Where a clone without the shared copy keeps its downloaded CIFAR-10: $PODD_TEST_CACHE, else ~/.cache/podd-kit."""
    return Path(os.environ.get("PODD_TEST_CACHE") or Path.home() / ".cache" / "podd-kit").expanduser()


def download_cifar10(cache: Path) -> Path:
    """Fetch CIFAR-10 through the kit's own loader (torchvision) into cache; one-line failure when offline."""
    from podd_lib.data import load_raw
    from podd_lib.errors import PoddError

    try:
        load_raw("cifar10", data_root=cache, download=True, train_per_class=1, test_per_class=1, cache=False)
    except PoddError as e:
        pytest.fail(f"real CIFAR-10 not found and could not be downloaded ({e}); set PODD_CIFAR10_ROOT to a data "
                    f"root with cifar10/{{train,test}}/ or provide {CIFAR10_ZIP}", pytrace=False)
    return cache


class Payload:
    """A pickle payload: loading it with plain pickle creates the folder `marker` (proof that code ran)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def plant_payload(path: Path, marker: Path, key: str) -> None:
    """Rewrite a kit file (poster.pt, checkpoint.pt) with a payload object under key, keeping its other entries."""
    import torch

    data = torch.load(path, weights_only=True)
    data[key] = Payload(marker)
    torch.save(data, path)
