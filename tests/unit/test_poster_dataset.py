"""A poster as a dataset: (patch, soft label) pairs from a run folder or an export, usable by any training loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from podd_lib.errors import PoddError
from podd_lib.export import export_run, poster_dataset
from podd_lib.run import distill, load_run
from tests.helpers import ORDER, fake_real, tiny_cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny smoke-profile run: 6x2 patches on a 0.5-IPC CIFAR-10-shaped poster, 2 outer steps."""
    out = tmp_path_factory.mktemp("runs") / "r"
    distill(tiny_cfg(steps=2), fake_real(), ORDER, out, progress=False)
    return out


def test_run_folder_gives_patches_and_labels_that_sum_to_one(run_dir):
    ds = poster_dataset(run_dir)
    run = load_run(run_dir)
    assert len(ds) == 12 and ds.classes == run["classes"]
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and y.shape == (10,)
    assert torch.allclose(ds.y.sum(-1), torch.ones(len(ds)), atol=1e-5)
    assert torch.equal(ds.x, run["x"]) and torch.equal(ds.y, run["y"])  # what the kit's evaluation trains on


def test_exported_file_and_folder_give_the_same_dataset(run_dir, tmp_path):
    run = load_run(run_dir)
    f = export_run(run, "pt", tmp_path / "d.pt", run_dir)
    folder = export_run(run, "pt", tmp_path / "exp", run_dir).parent
    for ds in (poster_dataset(f), poster_dataset(folder)):
        assert torch.equal(ds.x, run["x"]) and torch.equal(ds.y, run["y"])


def test_transform_is_applied_to_each_patch(run_dir):
    ds = poster_dataset(run_dir, transform=lambda x: x.flip(-1))
    assert torch.equal(ds[0][0], poster_dataset(run_dir)[0][0].flip(-1))


def test_a_torchvision_resnet_trains_on_the_poster(run_dir):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ds = poster_dataset(run_dir)
    loader = torch.utils.data.DataLoader(ds, batch_size=6, shuffle=True)
    net = torchvision.models.resnet18(num_classes=len(ds.classes))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x0, y0 = ds.x, ds.y
    net.eval()
    with torch.no_grad():
        before = -(y0 * F.log_softmax(net(x0), -1)).sum(-1).mean()
    net.train()
    for _ in range(3):
        for x, y in loader:
            loss = -(y * F.log_softmax(net(x), -1)).sum(-1).mean()  # soft-label cross-entropy
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        after = -(y0 * F.log_softmax(net(x0), -1)).sum(-1).mean()
    assert torch.isfinite(after) and after < before


def test_anything_else_fails_in_one_line(tmp_path):
    with pytest.raises(PoddError, match="neither a run folder"):
        poster_dataset(tmp_path / "nothing")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a tensor file")
    with pytest.raises(PoddError, match="damaged"):
        poster_dataset(bad)
    torch.save({"x": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(PoddError, match="missing y, classes"):
        poster_dataset(tmp_path / "foreign.pt")
