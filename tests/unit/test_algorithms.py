"""The algorithm interface, MTT, DM, DC and DREAM on posters."""

import csv

import pytest
import torch

from podd_lib.algorithms.base import RealSampler, SyntheticSet
from podd_lib.config import resolve_config
from podd_lib.algorithms.dc import GradientMatching, DCSettings, layer_distance, match_distance
from podd_lib.run import distill, load_run
from podd_lib.algorithms.dm import DistributionMatching, DMSettings, dm_loss, weighted_class_means
from podd_lib.algorithms.dream import DreamSampler, kmeans, representatives, split_evenly
from podd_lib.errors import PoddError
from podd_lib.models import ConvNet
from podd_lib.algorithms.mtt import (ExpertSettings, MTTSettings, TrajectoryMatching, flatten_params, load_or_train_experts,
                          mtt_loss, unflatten_params)
from podd_lib.poddl import PosterLabels
from podd_lib.poster import extract_patches, init_from_images, make_geometry, tiling_geometry
from tests.helpers import ORDER, fake_real, tiny_cfg


def small_syn(learned=False, seed=0):
    geom = make_geometry(0.5, 10, (32, 32), (5, 2), (6, 2))
    labels = PosterLabels(ORDER, geom, learned=learned)
    poster = torch.randn(3, geom.d_h, geom.d_w, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    Y = labels.Y.clone().requires_grad_(True) if learned else None
    return SyntheticSet(poster, Y, labels, geom)


# ----------------------------------------------------------------------------- interface


def test_synthetic_set_is_the_poster_patches_and_labels():
    syn = small_syn(learned=True)
    x, y = syn.batch()
    assert torch.equal(x, extract_patches(syn.poster, syn.geom)) and torch.equal(y, syn.labels(syn.Y))
    xs, ys = syn.sample(5, torch.Generator().manual_seed(0))
    assert xs.shape == (5, 3, 32, 32) and torch.allclose(ys.sum(1), torch.ones(5))
    (xs.sum() + ys.sum()).backward()
    assert syn.poster.grad is not None and syn.Y.grad is not None


def test_real_sampler_class_batches_hold_one_class():
    real = fake_real(n_per_class=5)
    rs = RealSampler(real.x_train, real.y_train, 10)
    xb = rs.class_batch(3, 4, torch.Generator().manual_seed(0))
    members = real.x_train[real.y_train == 3]
    assert xb.shape[0] == 4 and all((members == row).all((1, 2, 3)).any() for row in xb)
    with pytest.raises(PoddError, match="class 9 has no training images"):
        RealSampler(real.x_train[:45], real.y_train[:45], 10).class_batch(0, 2, torch.Generator())


# ----------------------------------------------------------------------------- MTT


def test_mtt_loss_is_zero_at_the_expert_end_point_and_one_at_its_start():
    g = torch.Generator().manual_seed(0)
    start, target = torch.randn(50, generator=g), torch.randn(50, generator=g)
    assert float(mtt_loss(target, start, target)) == 0.0
    assert float(mtt_loss(start, start, target)) == pytest.approx(1.0)
    assert float(mtt_loss((start + target) / 2, start, target)) == pytest.approx(0.25)


def test_flatten_roundtrip():
    model = ConvNet(width=4)
    params = dict(model.named_parameters())
    back = unflatten_params(flatten_params(params), params)
    assert all(torch.equal(back[k], params[k]) for k in params)
    with pytest.raises(PoddError, match="parameters"):
        unflatten_params(torch.zeros(3), params)


def test_mtt_student_that_reaches_the_target_scores_zero():
    """Build an 'expert' whose epoch-1 point is exactly where N student steps on the patches land."""
    torch.manual_seed(0)
    model = ConvNet(width=4, depth=1)
    syn = small_syn()
    s = MTTSettings(syn_steps=2, expert_epochs=1, max_start_epoch=0, syn_lr=0.1, bs_d=1000, aug="none")
    like = {k: p.detach() for k, p in model.named_parameters()}
    start = flatten_params(like)
    # Replay the student by hand (full batch, no augmentation: deterministic).
    from torch.func import functional_call

    from podd_lib.algorithms.base import soft_cross_entropy

    flat = start.clone()
    x, y = syn.batch()
    for _ in range(2):
        flat = flat.requires_grad_(True)
        loss = soft_cross_entropy(functional_call(model, unflatten_params(flat, like), (x.detach(),)), y)
        (gr,) = torch.autograd.grad(loss, flat)
        flat = (flat - 0.1 * gr).detach()
    experts = torch.stack([start, flat])[None]  # (1 expert, 2 epochs, P)
    algo = TrajectoryMatching(model, s, experts)
    gen = torch.Generator().manual_seed(1)
    loss, info = algo.meta_loss(syn, None, gen, 0)
    assert float(loss.detach()) < 1e-8 and info["start_epoch"] == 0
    far = TrajectoryMatching(model, s, torch.stack([start, flat + 1.0])[None])
    assert float(far.meta_loss(syn, None, gen, 0)[0].detach()) > 1e-3  # the test can fail
    loss_far, _ = far.meta_loss(syn, None, gen, 0)
    loss_far.backward()
    assert syn.poster.grad.abs().sum() > 0 and far.alpha.grad is not None


def test_mtt_refuses_short_trajectories():
    model = ConvNet(width=4, depth=1)
    with pytest.raises(PoddError, match="at least 4 epochs"):
        TrajectoryMatching(model, MTTSettings(), torch.zeros(1, 3, 10))


def test_experts_are_cached_and_reused(tmp_path, monkeypatch):
    real = fake_real(n_per_class=4)
    model = ConvNet(width=4, depth=1)
    es = ExpertSettings(n_experts=2, epochs=2, bs=16, aug="none")
    a = load_or_train_experts(model, real.x_train, real.y_train, es, tmp_path)
    n_params = sum(p.numel() for p in model.parameters())
    assert a.shape == (2, 3, n_params) and not torch.equal(a[0, 0], a[0, 2]) and not torch.equal(a[0, 0], a[1, 0])
    import podd_lib.algorithms.mtt as mtt

    monkeypatch.setattr(mtt, "train_expert", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    b = load_or_train_experts(model, real.x_train, real.y_train, es, tmp_path)
    assert torch.equal(a, b)
    with pytest.raises(PoddError, match="expected 3"):
        load_or_train_experts(model, real.x_train, real.y_train, ExpertSettings(2, 3, bs=16, aug="none"), tmp_path)


def test_experts_wanted_by_two_runs_at_once_are_trained_once(tmp_path, monkeypatch):
    """Two threads (an executor's two MTT jobs) asking for the same experts: each expert is trained once."""
    import threading
    import time as _time

    import podd_lib.algorithms.mtt as mtt

    real = fake_real(n_per_class=4)
    es = ExpertSettings(n_experts=2, epochs=2, bs=16, aug="none")
    calls, train = [], mtt.train_expert

    def slow_train(*a, **k):
        calls.append(a[4])
        _time.sleep(0.3)  # both threads reach the missing expert while it is being trained
        return train(*a, **k)

    monkeypatch.setattr(mtt, "train_expert", slow_train)
    out = [None, None]

    def job(j):
        out[j] = load_or_train_experts(ConvNet(width=4, depth=1), real.x_train, real.y_train, es, tmp_path)

    threads = [threading.Thread(target=job, args=(j,)) for j in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == [0, 1] and torch.equal(out[0], out[1])


# ----------------------------------------------------------------------------- DM


def test_dm_loss_is_zero_when_patch_embeddings_equal_the_real_class_means():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(10, 16, generator=g)
    cls = torch.arange(30) % 10
    onehot = torch.nn.functional.one_hot(cls, 10).float()
    assert float(dm_loss(means, means[cls], onehot)) == pytest.approx(0.0, abs=1e-10)
    assert float(dm_loss(means, means[cls] + 0.1, onehot)) == pytest.approx(10 * 16 * 0.01, rel=1e-5)


def test_dm_weighted_means_follow_soft_labels():
    emb = torch.tensor([[0.0], [4.0]])
    w = torch.tensor([[0.75, 0.0], [0.25, 1.0]])
    means, mass = weighted_class_means(emb, w)
    assert means[:, 0].tolist() == [1.0, 4.0] and mass.tolist() == [1.0, 1.0]
    # a class no patch carries is skipped, not matched against a zero mean
    assert float(dm_loss(torch.tensor([[1.0], [4.0], [99.0]]), emb, torch.cat([w, torch.zeros(2, 1)], 1))) == 0.0


def test_dm_meta_loss_reaches_the_poster_and_labels():
    real = fake_real(n_per_class=4)
    syn = small_syn(learned=True)
    algo = DistributionMatching(ConvNet(width=4, depth=2), DMSettings(real_per_class=3, bs_d=12))
    loss, _ = algo.meta_loss(syn, RealSampler(real.x_train, real.y_train, 10), torch.Generator().manual_seed(0), 0)
    loss.backward()
    assert float(loss.detach()) > 0 and syn.poster.grad.abs().sum() > 0 and syn.Y.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- DC


def test_dc_layer_distance():
    g = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    assert float(layer_distance(g, g)) == pytest.approx(0.0, abs=1e-5)
    assert float(layer_distance(g, 3 * g)) == pytest.approx(0.0, abs=1e-5)  # cosine: scale-free
    assert float(layer_distance(g, -g)) == pytest.approx(16.0, rel=1e-4)  # 8 units x (1 - (-1))
    assert float(layer_distance(torch.ones(8), -torch.ones(8))) == 0.0  # biases are skipped, as in DC
    assert float(match_distance([g, torch.ones(8)], [-g, torch.zeros(8)])) == pytest.approx(16.0, rel=1e-4)


def test_dc_meta_loss_reaches_the_poster():
    real = fake_real(n_per_class=4)
    syn = small_syn()
    algo = GradientMatching(ConvNet(width=4, depth=2), DCSettings(real_per_class=3, bs_d=12))
    loss, _ = algo.meta_loss(syn, RealSampler(real.x_train, real.y_train, 10), torch.Generator().manual_seed(0), 0)
    loss.backward()
    assert float(loss.detach()) > 0 and syn.poster.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- DREAM


def blobs(k=4, per=30, d=5, seed=0):
    """k well-separated clusters, each symmetric about its centre (so its mean is the centre) and
    holding one sample exactly at the centre; returns (x, centres, index of each centre sample)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 20
    noise = torch.randn(k, per, d, generator=g) + 0.5  # no noise vector is near zero
    x = torch.cat([centres[:, None], centres[:, None] + noise, centres[:, None] - noise], 1).reshape(-1, d)
    perm = torch.randperm(x.shape[0], generator=g)
    x = x[perm]
    centre_idx = torch.argsort(perm)[torch.arange(k) * (2 * per + 1)]
    return x, centres, centre_idx


def test_dream_picks_the_points_nearest_the_true_centres():
    x, centres, centre_idx = blobs()
    assert torch.equal(x[centre_idx], centres)
    pick = representatives(x, 4, torch.Generator().manual_seed(0))
    assert sorted(pick.tolist()) == sorted(centre_idx.tolist())
    rand = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:4]
    assert sorted(rand.tolist()) != sorted(centre_idx.tolist())  # random sampling would not


def test_kmeans_recovers_blob_centres_and_rejects_bad_k():
    x, centres, _ = blobs(k=3)
    found, assign = kmeans(x, 3, torch.Generator().manual_seed(1))
    assert torch.cdist(centres, found).min(1).values.max() < 1e-4
    assert torch.bincount(assign).tolist() == [61, 61, 61]
    with pytest.raises(PoddError, match="k-means"):
        kmeans(x, 0, torch.Generator())


def test_dream_sampler_reclusters_every_interval_and_splits_over_classes():
    real = fake_real(n_per_class=8)
    s = DreamSampler(real.x_train, real.y_train, 10, interval=3)
    feats = lambda b: b.flatten(1)[:, :16]  # noqa: E731
    g = torch.Generator().manual_seed(0)
    xb, yb = s.batch(25, g, feats, step=0)
    assert xb.shape[0] == 25 and torch.bincount(yb, minlength=10).tolist() == split_evenly(25, 10)
    assert s.reclusterings == 10
    s.batch(25, g, feats, step=2)
    assert s.reclusterings == 10  # same block: cached
    s.batch(25, g, feats, step=3)
    assert s.reclusterings == 20
    with pytest.raises(PoddError, match="features"):
        DreamSampler(real.x_train, real.y_train, 10).batch(10, g)


# ----------------------------------------------------------------------------- init and end to end


def test_real_init_on_the_tiling_gives_the_images_back():
    geom = tiling_geometry(10, (32, 32), (5, 2))
    images = torch.randn(10, 3, 32, 32)
    poster = init_from_images(geom, images, ORDER)
    patches = extract_patches(poster, geom)  # x-major patch order over the 5x2 grid
    flat_order = [ORDER[r][c] for c in range(5) for r in range(2)]
    assert torch.allclose(patches, images[flat_order])


@pytest.mark.parametrize("algorithm,sampling,init", [("dm", "random", "real"), ("dc", "dream", "dream"),
                                                     ("ratbptt", "dream", "normal"), ("mtt", "random", "normal")])
def test_every_algorithm_distils_a_poster_end_to_end(tmp_path, algorithm, sampling, init):
    real = fake_real()
    over = dict(algorithm=algorithm, sampling=sampling, init=init, steps=2, real_per_class=3, dream_interval=1,
                syn_steps=2, expert_epochs=1, max_start_epoch=1, n_experts=1, expert_bs=16, expert_aug="none",
                experts_root=str(tmp_path / "experts"))
    cfg = tiny_cfg(**over)
    st = distill(cfg, real, ORDER, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    assert st.step == 2 and torch.isfinite(run["poster"]).all()
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert len(rows) == 2 and all(float(r["grad_norm"]) > 0 for r in rows)
    if algorithm == "mtt":
        assert "syn_lr" in rows[0] and (tmp_path / "experts").exists()


def test_mtt_resume_restores_the_learned_step_size(tmp_path):
    real = fake_real()
    over = dict(algorithm="mtt", steps=3, syn_steps=2, expert_epochs=1, max_start_epoch=1, n_experts=1,
                expert_bs=16, expert_aug="none", experts_root=str(tmp_path / "experts"), lr_lr=0.01)
    cfg = tiny_cfg(**over)
    full = distill(cfg, real, ORDER, tmp_path / "full", progress=False)
    distill(cfg, real, ORDER, tmp_path / "part", progress=False, stop_after=1)
    resumed = distill(cfg, real, ORDER, tmp_path / "part", resume=True, progress=False)
    assert float(full.extras["syn_lr"].detach()) != pytest.approx(0.01)  # alpha moved
    assert torch.equal(full.extras["syn_lr"], resumed.extras["syn_lr"])
    assert torch.equal(full.poster, resumed.poster)


def test_bad_algorithm_settings_fail_in_one_line():
    with pytest.raises(PoddError, match="unknown algorithm 'mmt'"):
        resolve_config("cifar10", 1.0, "smoke", {"algorithm": "mmt"})
    with pytest.raises(PoddError, match="DREAM sampling does not apply"):
        resolve_config("cifar10", 1.0, "smoke", {"algorithm": "mtt", "sampling": "dream"})
    assert resolve_config("cifar10", 1.0, "smoke", {"init": "noise"}).init == "normal"


# ----------------------------------------------------------------------------- figure 9: per-class posters


def test_stacked_posters_cut_each_poster_separately():
    geom = make_geometry(10, 1, (32, 32), (1, 1), (4, 4))
    posters = torch.randn(3, 3, geom.d_h, geom.d_w, requires_grad=True)
    x = extract_patches(posters, geom)
    p = geom.n_patches
    assert x.shape == (3 * p, 3, 32, 32)
    for k in range(3):
        assert torch.equal(x[k * p:(k + 1) * p], extract_patches(posters[k], geom))
    idx = torch.tensor([p + 2, 2 * p])
    assert torch.equal(extract_patches(posters, geom, idx), x[idx])
    x[p:2 * p].sum().backward()  # only poster 1 receives gradient
    assert posters.grad[1].abs().sum() > 0 and posters.grad[0].abs().sum() == 0 and posters.grad[2].abs().sum() == 0


def test_per_class_posters_distil_end_to_end(tmp_path):
    real = fake_real()
    cfg = tiny_cfg(per_class_posters=True, labels="fixed", patch_grid=[3, 3], steps=2)
    cfg = resolve_config("cifar10", 4, "smoke", {**cfg.user_overrides})
    from podd_lib.run import geometry_from_config

    geom = geometry_from_config(cfg)
    assert (geom.d_h, geom.d_w) == (64, 64) and geom.n_patches == 9  # sqrt(4) x the 32x32 one-class tiling
    order = [[k] for k in range(10)]
    distill(cfg, real, order, tmp_path / "pc", progress=False)
    run = load_run(tmp_path / "pc")
    assert run["poster"].shape == (10, 3, 64, 64) and run["x"].shape == (90, 3, 32, 32)
    assert torch.equal(run["y"].argmax(1), torch.arange(10).repeat_interleave(9))
    assert (tmp_path / "pc" / "poster.png").exists()
    with pytest.raises(PoddError, match="fixed one-hot"):
        geometry_from_config(resolve_config("cifar10", 0.5, "smoke", {"per_class_posters": True, "labels": "learned"}))


def test_imagefolder_export_is_atomic_and_handles_per_class_posters(tmp_path, monkeypatch):
    from podd_lib.export import export_run

    real = fake_real()
    cfg = resolve_config("cifar10", 4, "smoke", {**tiny_cfg(per_class_posters=True, labels="fixed",
                                                            patch_grid=[2, 2], steps=1).user_overrides})
    distill(cfg, real, [[k] for k in range(10)], tmp_path / "pc", progress=False)
    run = load_run(tmp_path / "pc")
    dest = tmp_path / "exp"
    export_run(run, "imagefolder", dest)
    files = sorted(p.relative_to(dest).as_posix() for p in dest.glob("*/*.png"))
    assert len(files) == 40 and files[0].startswith("airplane/") and (dest / "soft_labels.json").exists()
    # a failing export leaves the previous one untouched and no temporary folder behind
    import PIL.Image

    def broken(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(PIL.Image.Image, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        export_run(run, "imagefolder", dest)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.glob("*/*.png")) == files
    assert not list(tmp_path.glob(".exp.*"))


def test_algorithm_settings_are_checked_before_any_data():
    for over, msg in (({"real_per_class": 0}, "real_per_class must be an integer >= 1"),
                      ({"dream_interval": 0}, "dream_interval must be"),
                      ({"syn_steps": 2.5}, "syn_steps must be an integer"),
                      ({"syn_lr": -0.01}, "syn_lr must be a positive"),
                      ({"per_class_posters": True, "labels": "fixed", "init": "real"}, "init=normal")):
        with pytest.raises(PoddError, match=msg):
            resolve_config("cifar10", 1.0, "smoke", over)


def test_dm_run_with_an_empty_class_fails_before_any_step(tmp_path):
    real = fake_real()
    keep = real.y_train != 9
    real.x_train, real.y_train = real.x_train[keep], real.y_train[keep]
    with pytest.raises(PoddError, match="class 9 has no training images"):
        distill(tiny_cfg(algorithm="dm", real_per_class=3), real, ORDER, tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
