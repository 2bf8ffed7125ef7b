"""Evaluation protocol on tiny toy data: vmapped = sequential training, learning, baselines, JSON."""

import dataclasses
import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from podd_lib.errors import PoddError
from podd_lib.algorithms.base import soft_cross_entropy
from podd_lib.evaluate import (EvalProtocol, evaluate_distilled, full_dataset_baseline, protocol_from_config,
                               random_real_subset, save_eval, train_and_test)
from podd_lib.training import eval_rng, hardened, random_batches
from podd_lib.models import make_model, stacked_fresh

TINY = {"width": 8}


def blobs(n: int, side: int = 16, seed: int = 0, dtype=torch.float32):
    """Two separable classes: a bright blob top-left (class 0) or bottom-right (class 1), plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    c = torch.where(y[:, None, None] == 0, 4.0, side - 5.0)
    img = torch.exp(-((yy - c) ** 2 + (xx - c) ** 2) / 8.0)
    x = img[:, None].expand(n, 3, side, side) + 0.3 * torch.randn(n, 3, side, side, generator=g)
    return x.contiguous().to(dtype), y


@dataclass
class ToyReal:
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_train: torch.Tensor
    y_train: torch.Tensor
    classes: tuple = ("tl", "br")
    image_size: tuple = (16, 16)
    channels: int = 3


def test_vmapped_equals_sequential_and_plain_torch_adam():
    """The key check: K models trained together equal K models trained one by one."""
    x, y = blobs(24, dtype=torch.float64)  # float64: conv biases before instance norm get pure
    xt, yt = blobs(64, seed=1, dtype=torch.float64)  # rounding-noise gradients that Adam amplifies
    ys = F.one_hot(y, 2).double() * 0.8 + 0.1
    p = EvalProtocol(num_models=3, steps=(4, 8), bs_d=8, seed=3, **TINY)
    vec = train_and_test(x, ys, xt, yt, p, vectorize=True, progress=False, return_params=True)
    seq = train_and_test(x, ys, xt, yt, p, vectorize=False, progress=False, return_params=True)
    assert vec["vectorized"] and not seq["vectorized"]
    for n in vec["params"]:
        torch.testing.assert_close(vec["params"][n], seq["params"][n], atol=1e-5, rtol=1e-5)
    assert [s["acc_pct"] for s in vec["by_step"]] == [s["acc_pct"] for s in seq["by_step"]]

    # Replay the same seeds and batches with nn.Modules and torch.optim.Adam, one model at a time.
    from podd_lib.augment import augment
    init_seeds, g = eval_rng(3, 3)
    fn = lambda: make_model("convnet", 3, 2, (16, 16), **TINY)  # noqa: E731
    params, _ = stacked_fresh(fn, init_seeds)
    nets = [fn().double() for _ in range(3)]
    for k, net in enumerate(nets):
        net.load_state_dict({n: p[k] for n, p in params.items()})
    opts = [torch.optim.Adam(net.parameters(), lr=1e-3) for net in nets]
    for _ in range(8):
        idx = random_batches(24, 3, 8, g)
        xb = augment(x[idx], "flip_rotate", g)
        for k, (net, opt) in enumerate(zip(nets, opts)):
            opt.zero_grad()
            soft_cross_entropy(net(xb[k]), ys[idx[k]]).backward()
            opt.step()
    for k, net in enumerate(nets):
        for n, p in net.named_parameters():
            torch.testing.assert_close(p.detach(), vec["params"][n][k], atol=1e-5, rtol=1e-5)


def test_batchnorm_falls_back_to_a_loop_and_updates_running_stats():
    x, y = blobs(16)
    xt, yt = blobs(32, seed=1)
    kw = dict(protocol=EvalProtocol(num_models=2, steps=(3,), bs_d=8, seed=1, width=8, norm="batch"), progress=False)
    auto = train_and_test(x, F.one_hot(y, 2).float(), xt, yt, return_params=True, **kw)
    assert auto["vectorized"] is False and auto["training"] == "loop over models"
    assert auto["buffers"]["features.1.num_batches_tracked"].tolist() == [3, 3]
    assert auto["buffers"]["features.1.running_mean"].abs().sum() > 0
    with pytest.raises(PoddError, match="cannot be vmapped"):
        train_and_test(x, F.one_hot(y, 2).float(), xt, yt, vectorize=True, **kw)


def test_learns_a_separable_toy_set():
    x, y = blobs(40)
    xt, yt = blobs(200, seed=1)
    res = train_and_test(x, F.one_hot(y, 2).float(), xt, yt, EvalProtocol(num_models=2, steps=(30,), bs_d=16, **TINY),
                         progress=False)
    assert res["final"]["mean_pct"] > 90.0


def test_evaluate_distilled_protocol_soft_hard_and_json(tmp_path):
    x, y = blobs(12)
    xt, yt = blobs(40, seed=1)
    real = ToyReal(xt, yt, x, y)
    ys = torch.softmax(torch.randn(12, 2, generator=torch.Generator().manual_seed(0)), -1)
    res = evaluate_distilled(x, ys, real, EvalProtocol(num_models=2, steps=(4, 2, 4), bs_d=6, **TINY), progress=False)
    assert set(res) == {"protocol", "soft", "hard"}
    p = res["protocol"]
    assert p["num_models"] == 2 and p["steps"] == [2, 4] and p["std"].endswith("(ddof=0)")
    assert p["arch_kwargs"] == TINY and p["bs_d"] == 6 and p["lr"] == 1e-3 and p["seed"] == 0
    assert p["selection"].startswith("none")
    assert res["hard"] is not None and res["hard"]["labels"].startswith("hard")
    assert [s["step"] for s in res["soft"]["by_step"]] == [2, 4]
    for s in res["soft"]["by_step"]:
        acc = torch.tensor(s["acc_pct"], dtype=torch.float64)
        assert len(s["acc_pct"]) == 2 and s["std_pct"] == pytest.approx(float(acc.std(correction=0)))
    out = save_eval(res, tmp_path / "eval.json")
    assert json.loads(out.read_text())["protocol"]["arch"] == "convnet"
    no_hard = evaluate_distilled(x, ys, real, EvalProtocol(num_models=1, steps=(1,), bs_d=4, **TINY),
                                 progress=False, with_hard_labels=False)
    assert no_hard["hard"] is None


def test_hardened_and_soft_cross_entropy():
    y = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.2, 0.2]])
    assert torch.equal(hardened(y), torch.tensor([[0.0, 1, 0], [1, 0, 0]]))
    logits = torch.randn(2, 3)
    torch.testing.assert_close(soft_cross_entropy(logits, hardened(y)),
                               F.cross_entropy(logits, torch.tensor([1, 0])))


def test_random_real_subset_k_per_class_and_fractional_budget():
    y = torch.arange(100) % 10
    x = torch.randn(100, 3, 8, 8)
    xs, ys = random_real_subset(x, y, k_per_class=3, seed=0)
    assert xs.shape == (30, 3, 8, 8) and torch.equal(ys.sum(0), torch.full((10,), 3.0))
    xs2, _ = random_real_subset(x, y, k_per_class=3, seed=0)
    assert torch.equal(xs, xs2)
    # the picked images are real training images of the right class
    picked = (xs[:, None] == x[None]).flatten(2).all(-1).float().argmax(1)
    assert torch.equal(y[picked], ys.argmax(1))
    xb, yb = random_real_subset(x, y, pixel_budget_ipc=0.7, seed=1, num_classes=10)
    assert xb.shape[0] == 7 and yb.sum(0).max() == 1
    xc, yc = random_real_subset(x, y, pixel_budget_ipc=1.5, seed=1, num_classes=10)
    assert xc.shape[0] == 15 and set(yc.sum(0).tolist()) == {1.0, 2.0}
    with pytest.raises(PoddError, match="exactly one"):
        random_real_subset(x, y, k_per_class=1, pixel_budget_ipc=0.5)
    with pytest.raises(PoddError, match="buys no whole image"):
        random_real_subset(x, y, pixel_budget_ipc=0.05)
    with pytest.raises(PoddError, match="fewer than"):
        random_real_subset(x, y, k_per_class=11)


def test_full_dataset_baseline_runs_epochs():
    x, y = blobs(64)
    xt, yt = blobs(64, seed=1)
    res = full_dataset_baseline(x, y, xt, yt, epochs=2, batch_size=16, arch_kwargs=TINY,
                                progress=False)
    assert res["protocol"]["steps"] == 8 and res["protocol"]["steps_per_epoch"] == 4
    assert res["final"]["step"] == 8 and 0.0 <= res["final"]["mean_pct"] <= 100.0
    json.dumps(res)


def test_bad_input_raises_before_compute():
    x, y = blobs(8)
    ys = F.one_hot(y, 2).float()
    with pytest.raises(PoddError, match="unknown architecture"):
        train_and_test(x, ys, x, y, EvalProtocol(arch="lenet"), progress=False)
    with pytest.raises(PoddError, match="unknown augmentation op"):
        EvalProtocol(augmentation="blur")
    with pytest.raises(PoddError, match="must be an EvalProtocol"):
        train_and_test(x, ys, x, y, {"steps": (1,)}, progress=False)
    with pytest.raises(PoddError, match="y_syn must be"):
        train_and_test(x, y, x, y, progress=False)
    with pytest.raises(PoddError, match="labels outside"):
        train_and_test(x, ys, x, y + 5, progress=False)
    with pytest.raises(PoddError, match="steps must be"):
        EvalProtocol(steps=(0,))
    with pytest.raises(PoddError, match="batch size >= 1"):
        EvalProtocol(bs_d=0)
    with pytest.raises(PoddError, match="width must be int"):
        EvalProtocol(width="wide")
    with pytest.raises(PoddError, match="differ from x_syn"):
        train_and_test(x, ys, x[:, :1], y, progress=False)
    with pytest.raises(PoddError, match="lacks attribute"):
        evaluate_distilled(x, ys, object(), progress=False)
    with pytest.raises(PoddError, match="do not match the real data"):
        evaluate_distilled(x[..., :8, :8], ys, ToyReal(x, y, x, y), progress=False)
    with pytest.raises(PoddError, match="not JSON-serialisable"):
        save_eval({"t": torch.zeros(1)}, "/tmp/never-written.json")


def test_channels_last_loop_gives_the_same_models_and_accuracy(monkeypatch):
    """The loop over models runs channels-last batches through the fused block; same results."""
    import podd_lib.training as ev

    x, y = blobs(24, dtype=torch.float64)
    xt, yt = blobs(64, seed=1, dtype=torch.float64)
    ys = F.one_hot(y, 2).double() * 0.8 + 0.1
    kw = dict(protocol=EvalProtocol(num_models=2, steps=(6,), bs_d=8, seed=5, **TINY), progress=False,
              return_params=True, vectorize=False)
    on = train_and_test(x, ys, xt, yt, **kw)
    monkeypatch.setattr(ev, "CHANNELS_LAST", False)
    off = train_and_test(x, ys, xt, yt, **kw)
    for n in on["params"]:
        torch.testing.assert_close(on["params"][n], off["params"][n], atol=1e-9, rtol=1e-9)
    assert on["by_step"][-1]["acc_pct"] == off["by_step"][-1]["acc_pct"]


def test_the_quick_profile_gives_its_protocol():
    from podd_lib.config import resolve_config

    cfg = resolve_config("cifar10", 1.0, "quick")
    p = protocol_from_config(cfg)
    assert isinstance(p, EvalProtocol)
    assert dataclasses.asdict(p) == {
        "arch": "convnet", "num_models": 4, "steps": (300,), "bs_d": 96, "lr": 1e-3, "augmentation": "flip_rotate",
        "aug_mode": "single", "seed": 0, "width": 32, "depth": 3, "norm": "instance", "pool": "avg",
        "backend": "auto", "compile_steps": "none", "autocast": "none"}
    assert p.arch_kwargs == {"width": 32, "depth": 3, "norm": "instance", "pool": "avg"}


def test_protocol_from_config_follows_the_run_config():
    from podd_lib.config import resolve_config

    cfg = resolve_config("cifar10", 1.0, "quick", {"backend": "reference", "seed": 3, "eval_steps": [600, 300],
                                                   "eval_models": 2, "width": 16, "syn_aug": "flip"})
    p = protocol_from_config(cfg)
    assert (p.backend, p.seed, p.steps, p.num_models, p.width, p.augmentation) == ("reference", 3, (300, 600), 2, 16,
                                                                                   "flip")


def test_the_protocol_is_frozen_and_has_no_other_fields():
    p = EvalProtocol()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.num_models = 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.eval_steps = (5,)  # not a field: cannot be added either
    with pytest.raises(TypeError):
        EvalProtocol(eval_steps=(5,))
    assert dataclasses.replace(p, num_models=2).num_models == 2 and p.num_models == 8
    assert EvalProtocol(steps=[600, 300, 600]).steps == (300, 600) == EvalProtocol(steps=(300, 600)).steps
    assert EvalProtocol(width=4).arch_kwargs == {"width": 4} and EvalProtocol().arch_kwargs == {}
