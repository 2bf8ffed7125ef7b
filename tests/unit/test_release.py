"""Where the paper's text and the authors' release differ: each option both ways, and the profiles that pick them."""

import json

import pytest
import torch

from podd_lib.algorithms import base
from podd_lib.algorithms.base import (EpochSampler, RealSampler, apply_outer_update, clip_by_ema, clip_by_updated_ema,
                                      epoch_generator, make_outer_state, steps_per_epoch)
from podd_lib.algorithms.ratbptt import RatBptt, RatBpttSettings
from podd_lib.config import PROFILES, TEXT_OR_RELEASE, resolve_config
from podd_lib.errors import PoddError
from podd_lib.kit.experiments import config_key
from podd_lib.run import distill
from tests.helpers import ORDER, fake_real, tiny_cfg

RELEASE = {"init": "class_areas", "curriculum_draw": "epoch", "clip_order": "release", "real_batches": "epochs",
           "keep": "best_train", "fixed_labels_form": "softmax"}
TEXT = {"init": "normal", "curriculum_draw": "step", "clip_order": "text", "real_batches": "random", "keep": "last",
        "fixed_labels_form": "majority"}


# ----------------------------------------------------------------------------- clipping order

def test_both_clipping_orders_start_from_the_first_norm():
    for clip in (clip_by_ema, clip_by_updated_ema):
        g = torch.full((4,), 1.0)  # norm 2
        norm, ema = clip(g, None, 0.9, 2.0)
        assert norm == 2.0 and ema == pytest.approx(2.0) and torch.equal(g, torch.full((4,), 1.0))


def test_release_clips_at_twice_the_updated_ema_and_text_at_twice_the_previous():
    g_text, g_release = torch.full((4,), 5.0), torch.full((4,), 5.0)  # norm 10, previous EMA 2
    n_text, ema_text = clip_by_ema(g_text, 2.0, 0.9, 2.0)
    n_release, ema_release = clip_by_updated_ema(g_release, 2.0, 0.9, 2.0)
    assert n_text == n_release == 10.0
    assert ema_text == pytest.approx(2.8) and ema_release == pytest.approx(2.8)  # same EMA afterwards
    assert float(g_text.norm()) == pytest.approx(4.0)  # 2 x 2
    assert float(g_release.norm()) == pytest.approx(5.6)  # 2 x (0.9 * 2 + 0.1 * 10)


@pytest.mark.parametrize("order, clipped", [("text", 4.0), ("release", 5.6)])
def test_outer_update_clips_in_the_configured_order(order, clipped):
    st = make_outer_state(torch.zeros(1, 2, 2), None, 0.1, torch.Generator())
    st.ema = 2.0
    loss = (st.poster * 5.0).sum()  # gradient 5 everywhere: norm 10
    norm = apply_outer_update(st, loss, 0.9, 2.0, order)
    assert norm == pytest.approx(10.0) and float(st.poster.grad.norm()) == pytest.approx(clipped)
    assert st.ema == pytest.approx(2.8)


# ----------------------------------------------------------------------------- curriculum draw

def curricula(draw: str, steps: int, n: int = 50, bs: int = 16, seed: int = 0) -> tuple[list[int], torch.Generator]:
    """c of outer steps 0..steps-1 under a draw mode, and the run generator afterwards."""
    s = RatBpttSettings(window=1, totwindow=101, bs=bs, curriculum_draw=draw)
    algo = RatBptt(None, s, seed)
    real = RealSampler(torch.zeros(n, 1, 2, 2), torch.zeros(n, dtype=torch.long), 1)
    gen = torch.Generator().manual_seed(7)
    return [algo.curriculum(real, gen, step) for step in range(steps)], gen


def test_epoch_curriculum_changes_only_every_ceil_n_over_bs_steps():
    per_epoch = steps_per_epoch(50, 16)
    assert per_epoch == 4 and steps_per_epoch(50000, 5000) == 10 and steps_per_epoch(50000, 256) == 196
    cs, gen = curricula("epoch", 8 * per_epoch)
    epochs = [cs[e * per_epoch:(e + 1) * per_epoch] for e in range(8)]
    assert all(len(set(e)) == 1 for e in epochs)  # one draw per epoch
    assert len({e[0] for e in epochs}) > 1  # and a new draw in later epochs
    assert all(0 <= c <= 100 for c in cs)
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(7).get_state())  # run generator untouched
    assert curricula("epoch", 8 * per_epoch, seed=1)[0] != cs  # the run's seed decides the draws


def test_step_curriculum_draws_every_step():
    cs, gen = curricula("step", 4)
    assert len(set(cs)) > 1
    assert not torch.equal(gen.get_state(), torch.Generator().manual_seed(7).get_state())


def test_unknown_curriculum_draw_fails():
    with pytest.raises(PoddError, match="curriculum_draw"):
        RatBpttSettings(window=1, totwindow=2, curriculum_draw="batch")


# ----------------------------------------------------------------------------- real batches

def indices_of(sampler: RealSampler, steps: range, bs: int, gen_seed: int = 0) -> list[torch.Tensor]:
    """The training-set indices of the real batches of the given outer steps (x holds each image's index)."""
    gen = torch.Generator().manual_seed(gen_seed)
    return [sampler.batch(bs, gen, None, step)[0].flatten().long() for step in steps]


def test_epoch_batches_cover_every_image_once_per_epoch():
    n, bs = 50, 16
    x, y = torch.arange(n, dtype=torch.float32).view(n, 1), torch.arange(n) % 5
    sampler = EpochSampler(x, y, 5, seed=3)
    for epoch in range(3):
        batches = indices_of(sampler, range(4 * epoch, 4 * epoch + 4), bs)
        assert [len(b) for b in batches] == [16, 16, 16, 2]
        assert torch.equal(torch.cat(batches).sort().values, torch.arange(n))
    first, second = (torch.cat(indices_of(sampler, range(4 * e, 4 * e + 4), bs)) for e in (0, 1))
    assert not torch.equal(first, second)  # reshuffled every epoch
    # a step's batch depends on (seed, step) alone: another generator, or a fresh sampler, gives the same
    again = indices_of(EpochSampler(x, y, 5, seed=3), range(5, 7), bs, gen_seed=99)
    assert all(torch.equal(a, b) for a, b in zip(again, indices_of(sampler, range(5, 7), bs)))
    # labels travel with their images
    xb, yb = sampler.batch(bs, torch.Generator(), None, 1)
    assert torch.equal(yb, xb.flatten().long() % 5)


def test_random_batches_are_drawn_independently():
    n, bs = 50, 16
    x, y = torch.arange(n, dtype=torch.float32).view(n, 1), torch.zeros(n, dtype=torch.long)
    batches = indices_of(RealSampler(x, y, 1), range(4), bs)
    assert all(len(b) == bs and len(set(b.tolist())) == bs for b in batches)
    assert len(set(torch.cat(batches).tolist())) < n  # four independent draws repeat images


def test_epoch_generator_separates_seeds_epochs_and_streams():
    draw = lambda *a: torch.randint(0, 2**30, (1,), generator=epoch_generator(*a)).item()  # noqa: E731
    assert draw(0, 1, "real") == draw(0, 1, "real")
    assert len({draw(0, 1, "real"), draw(1, 1, "real"), draw(0, 2, "real"), draw(0, 1, "curriculum")}) == 4


# ----------------------------------------------------------------------------- profiles and configs

def test_paper_profile_resolves_to_the_release_and_paper_text_to_the_text():
    assert "paper-text" in PROFILES
    for dataset in ("cifar10", "cifar100", "cub200", "tinyimagenet"):
        paper = resolve_config(dataset, 1.0, "paper")
        text = resolve_config(dataset, 1.0, "paper-text")
        assert {k: getattr(paper, k) for k in RELEASE} == RELEASE
        assert {k: getattr(text, k) for k in TEXT} == TEXT
        assert paper.lr == text.lr == (0.0005 if dataset == "tinyimagenet" else 0.001)
        p, t = paper.to_dict(), text.to_dict()
        different = sorted(k for k in p if p[k] != t[k] and k not in ("profile", "profile_overrides"))
        assert different == sorted(RELEASE), dataset  # nothing else differs


def test_defaults_and_quick_keep_the_text_and_its_keys():
    for profile in ("quick", "smoke"):
        cfg = resolve_config("cifar10", 1.0, profile)
        assert {k: getattr(cfg, k) for k in TEXT} == TEXT
    assert {k: v[0] for k, v in TEXT_OR_RELEASE.items()} == {k: TEXT[k] for k in TEXT_OR_RELEASE}
    assert {k: v[1] for k, v in TEXT_OR_RELEASE.items()} == {k: RELEASE[k] for k in TEXT_OR_RELEASE}


def test_paper_run_keys():
    # The release's behaviour is a different run; restoring the text's four values under `paper`
    # gives back the paper profile's earlier keys (tests/unit/test_layout.py pins them).
    paper = config_key(resolve_config("cifar10", 0.5, "paper"))
    text = config_key(resolve_config("cifar10", 0.5, "paper-text"))
    assert paper == "ed0589817cef" and text == "3c8dd66e7848"
    assert config_key(resolve_config("cifar10", 0.5, "paper", TEXT)) == "23edd282e2ff"
    for key in ("curriculum_draw", "clip_order", "real_batches", "keep"):  # each option changes the key on its own
        one = {**TEXT, key: RELEASE[key]}
        assert config_key(resolve_config("cifar10", 0.5, "paper", one)) != "23edd282e2ff", key


def test_options_only_hash_where_they_are_read():
    base = {"algorithm": "dm", "seed": 0}
    dm = config_key(resolve_config("cifar10", 1.0, "quick", base))
    assert config_key(resolve_config("cifar10", 1.0, "quick", {**base, "curriculum_draw": "epoch",
                                                               "real_batches": "epochs"})) == dm
    assert config_key(resolve_config("cifar10", 1.0, "quick", {**base, "clip_order": "release"})) != dm
    dream = config_key(resolve_config("cifar10", 1.0, "quick", {"sampling": "dream"}))
    assert config_key(resolve_config("cifar10", 1.0, "quick", {"sampling": "dream", "real_batches": "epochs"})) == dream
    podd = config_key(resolve_config("cifar10", 1.0, "quick"))
    for key in ("curriculum_draw", "clip_order", "real_batches"):
        assert config_key(resolve_config("cifar10", 1.0, "quick", {key: RELEASE[key]})) != podd, key


@pytest.mark.parametrize("key", ["curriculum_draw", "clip_order", "real_batches"])
def test_bad_option_values_fail_in_one_line(key):
    with pytest.raises(PoddError, match=key):
        resolve_config("cifar10", 1.0, "quick", {key: "sometimes"})


def test_cli_offers_every_profile():
    from podd_lib.cli import PROFILE_CHOICES, build_parser

    assert PROFILE_CHOICES == PROFILES
    args = build_parser().parse_args(["info", "--dataset", "cifar10", "--profile", "paper-text"])
    assert args.profile == "paper-text"


def test_deviation_printout_names_the_release_options_under_paper():
    from podd_lib.kit.session import profile_deviations

    lines = profile_deviations("cifar10", "paper")
    assert lines == ["init = 'class_areas' (paper: 'normal')", "curriculum_draw = 'epoch' (default: 'step')",
                     "clip_order = 'release' (default: 'text')", "real_batches = 'epochs' (default: 'random')",
                     "keep = 'best_train' (default: 'last')", "fixed_labels_form = 'softmax' (default: 'majority')"]
    assert profile_deviations("cifar10", "paper-text") == []
    dm = profile_deviations("cifar10", "paper", overrides={"algorithm": "dm", "sampling": "dream"})
    assert [line.split(" =")[0] for line in dm] == ["init", "clip_order", "keep", "fixed_labels_form"]  # what DM with DREAM reads


# ----------------------------------------------------------------------------- whole runs

def release_cfg(**over):
    return tiny_cfg(**{"steps": 6, "totwindow": 12, **RELEASE, **over})  # 60 images, bs 16: 4 steps per epoch


def test_release_run_resumes_exactly_mid_epoch(tmp_path):
    real = fake_real()
    cfg = release_cfg()
    full = distill(cfg, real, ORDER, tmp_path / "full", progress=False)
    part = distill(cfg, real, ORDER, tmp_path / "part", progress=False, stop_after=3)
    resumed = distill(cfg, real, ORDER, tmp_path / "part", resume=True, progress=False)
    assert resumed.step == 6
    assert torch.allclose(full.poster, resumed.poster, atol=1e-6, rtol=0)
    assert torch.allclose(full.Y, resumed.Y, atol=1e-6, rtol=0)
    assert not torch.allclose(full.poster, part.poster, atol=1e-6, rtol=0)
    cs = [row["curriculum"] for row in resumed.history]
    assert len(set(cs[:4])) == 1 and cs[4] == cs[5]  # epoch 0: steps 1-4, epoch 1: steps 5-6
    written = json.loads((tmp_path / "part" / "config.json").read_text())
    assert {k: written[k] for k in RELEASE} == RELEASE  # config.json says what ran


@pytest.mark.parametrize("key", ["init", "curriculum_draw", "clip_order", "real_batches"])
def test_each_option_changes_the_run_and_resumes_exactly(tmp_path, key, monkeypatch):
    calls = {order: 0 for order in base.CLIP_ORDERS}

    def counted(order):
        clip = base.CLIP_ORDERS[order]

        def run(*args):
            calls[order] += 1
            return clip(*args)
        return run

    for order in list(calls):
        monkeypatch.setitem(base.CLIP_ORDERS, order, counted(order))
    real = fake_real()
    cfg = tiny_cfg(steps=6, totwindow=12, **{key: RELEASE[key]})
    text = distill(tiny_cfg(steps=6, totwindow=12), real, ORDER, tmp_path / "text", progress=False)
    assert calls == {"text": 6, "release": 0}
    full = distill(cfg, real, ORDER, tmp_path / "full", progress=False)
    distill(cfg, real, ORDER, tmp_path / "part", progress=False, stop_after=3)
    resumed = distill(cfg, real, ORDER, tmp_path / "part", resume=True, progress=False)
    assert torch.allclose(full.poster, resumed.poster, atol=1e-6, rtol=0), key
    if key == "clip_order":
        # Gradient norms fall on this problem, so neither order clips; the release's clip ran each step
        # (test_release_clips_at_twice_the_updated_ema_and_text_at_twice_the_previous: what it changes).
        assert calls == {"text": 6, "release": 12}
    else:
        assert not torch.allclose(full.poster, text.poster, atol=1e-3, rtol=0), key


def test_resume_refuses_another_option(tmp_path):
    real = fake_real()
    distill(tiny_cfg(steps=2), real, ORDER, tmp_path / "r", progress=False, stop_after=1)
    with pytest.raises(PoddError, match="different real_batches"):
        distill(tiny_cfg(steps=2, real_batches="epochs"), real, ORDER, tmp_path / "r", resume=True, progress=False)
