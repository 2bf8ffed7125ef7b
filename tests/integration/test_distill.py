"""The PoDD outer loop: outputs, checkpoint and resume, NaN handling, config resolution."""

import json

import pytest
import torch

from podd_lib.algorithms.base import RealSampler
from podd_lib.config import parse_sets, resolve_config
from podd_lib.run import distill, load_run
from podd_lib.errors import PoddError
from tests.helpers import ORDER, fake_real, tiny_cfg



def test_resume_gives_the_same_poster_as_an_uninterrupted_run(tmp_path):
    real = fake_real()
    cfg = tiny_cfg()
    full = distill(cfg, real, ORDER, tmp_path / "full", progress=False)
    part = distill(cfg, real, ORDER, tmp_path / "part", progress=False, stop_after=2)
    assert part.step == 2 and not (tmp_path / "part" / "poster.pt").exists()
    resumed = distill(cfg, real, ORDER, tmp_path / "part", resume=True, progress=False)
    assert resumed.step == 4
    # bitwise: every sum runs in a fixed order at a fixed thread count (tests/integration/test_determinism.py)
    assert torch.equal(full.poster, resumed.poster)
    assert torch.equal(full.Y, resumed.Y)  # 0.5 IPC on CIFAR-10: learned labels
    assert not torch.allclose(full.poster, part.poster, atol=1e-6, rtol=0)  # the test can fail
    for name in ("config.json", "poster.pt", "labels.pt", "poster.png", "metrics.csv", "checkpoint.pt"):
        assert (tmp_path / "part" / name).exists(), name
    rows = (tmp_path / "part" / "metrics.csv").read_text().strip().splitlines()
    assert rows[0] == "step,loss,grad_norm,curriculum,seconds" and len(rows) == 5
    run = load_run(tmp_path / "part")
    assert run["x"].shape == (12, 3, 32, 32) and torch.allclose(run["y"].sum(1), torch.ones(12))
    assert json.loads((tmp_path / "part" / "config.json").read_text())["label_kind"] == "learned"


def test_existing_run_is_not_overwritten(tmp_path):
    cfg = tiny_cfg(steps=1)
    distill(cfg, fake_real(), ORDER, tmp_path / "r", progress=False)
    with pytest.raises(PoddError, match="--resume"):
        distill(cfg, fake_real(), ORDER, tmp_path / "r", progress=False)
    with pytest.raises(PoddError, match="different width"):
        distill(tiny_cfg(steps=1, width=8), fake_real(), ORDER, tmp_path / "r", resume=True, progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_cfg(steps=5)
    real_batch = RealSampler.batch
    calls = {"n": 0}

    def poisoned(self, bs, gen, features=None, step=0):
        calls["n"] += 1
        xb, yb = real_batch(self, bs, gen, features, step)
        return (xb * float("nan"), yb) if calls["n"] == 3 else (xb, yb)

    monkeypatch.setattr(RealSampler, "batch", poisoned)
    with pytest.raises(PoddError, match=r"outer step 3.*step 2\)") as e:
        distill(cfg, fake_real(), ORDER, tmp_path / "r", progress=False)
    assert "\n" not in str(e.value)
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 2 and torch.isfinite(ck["poster"]).all()


def test_config_resolution_follows_the_paper():
    c = resolve_config("cifar10", 0.9, "paper")
    assert c.label_kind == "fixed" and c.poster_size == [60, 153] and c.steps == 40000
    assert resolve_config("cifar10", 0.5, "paper").label_kind == "learned"
    assert resolve_config("cifar100", 1.0, "paper").label_kind == "learned"
    q = resolve_config("cifar10", 1.0, "quick", {"width": 64})
    assert q.width == 64 and q.profile_overrides["window"] < 60
    assert resolve_config("tinyimagenet", 0.9, "paper").inner_lr == 0.0005
    with pytest.raises(PoddError, match="unknown config key"):
        resolve_config("cifar10", 1.0, "paper", {"widht": 3})
    with pytest.raises(PoddError, match="unknown dataset"):
        resolve_config("mnist", 1.0, "paper")
    with pytest.raises(PoddError, match="unknown profile"):
        resolve_config("cifar10", 1.0, "fast")
    assert parse_sets(["width=32", "order=random:3", "eval_steps=[10, 20]"]) == {
        "width": 32, "order": "random:3", "eval_steps": [10, 20]}


def test_config_posters_fit_their_budget():
    from podd_lib.poster import make_geometry

    for ds in ("cifar10", "cifar100", "cub200", "tinyimagenet"):
        for ipc in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
            c = resolve_config(ds, ipc, "paper")
            g = make_geometry(ipc, c.n_classes, tuple(c.image_size), tuple(c.class_grid),
                              tuple(c.patch_grid), tuple(c.poster_size))
            assert g.pixels <= ipc * c.n_classes * g.h * g.w + 1e-6
