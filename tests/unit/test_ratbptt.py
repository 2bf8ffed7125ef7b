"""RaT-BPTT: the functional inner Adam, the meta-gradient, and one outer step."""

import pytest
import torch
from torch.func import functional_call

from podd_lib.errors import PoddError
from podd_lib.models import make_model
from podd_lib.optim import adam_init, adam_step
from podd_lib.poddl import PosterLabels
from podd_lib.poster import make_geometry
from podd_lib.algorithms.base import clip_by_ema, make_outer_state, soft_cross_entropy
from podd_lib.algorithms.ratbptt import RatBpttSettings, inner_steps, outer_step
from tests.helpers import small_meta_grad


def tiny_net(dtype=torch.float32, norm="instance"):
    torch.manual_seed(0)
    return make_model("convnet", channels=1, num_classes=2, im_size=(8, 8), width=4, depth=1, norm=norm).to(dtype)


def test_functional_adam_equals_torch_adam_over_20_steps():
    # no norm layer: under instance norm the conv bias has a ~0 gradient that Adam blows up to
    # lr-sized steps of arbitrary sign, so rounding differences would not stay small
    net = tiny_net(norm="none")
    ref = tiny_net(norm="none")
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    params = {k: p.detach().clone().requires_grad_(True) for k, p in net.named_parameters()}
    state = adam_init({k: p.detach() for k, p in params.items()})
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randn(16, 1, 8, 8, generator=g)
        y = torch.randint(0, 2, (16,), generator=g)
        loss = torch.nn.functional.cross_entropy(functional_call(net, params, (x,)), y)
        grads = torch.autograd.grad(loss, list(params.values()))
        params, state = adam_step(params, dict(zip(params, grads)), state, lr=1e-2)
        params = {k: p.detach().requires_grad_(True) for k, p in params.items()}
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        opt.step()
    for k, p in ref.named_parameters():
        assert torch.allclose(params[k], p, atol=1e-5, rtol=0), k


def meta_loss(poster, Y, labels, geom, net, s, seed):
    """Real-batch loss after `window` differentiable steps from a seeded start.

    No plain steps: they depend on the poster too, and RaT-BPTT deliberately truncates them,
    so finite differences would see a dependence that the meta-gradient leaves out.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    params = {k: p.detach().clone().requires_grad_(True) for k, p in net.named_parameters()}
    state = adam_init({k: p.detach() for k, p in params.items()})
    params, state = inner_steps(net, params, state, poster, Y, labels, geom, s, s.window, gen, True)
    xr = torch.randn(12, 1, 8, 8, generator=gen, dtype=poster.dtype)
    yr = torch.randint(0, 2, (12,), generator=gen)
    return torch.nn.functional.cross_entropy(functional_call(net, params, (xr,)), yr)


def test_meta_gradient_matches_finite_differences():
    geom = make_geometry(1.0, 2, (8, 8), (2, 1), (3, 1))  # 8x16 poster, 3 overlapping patches
    labels = PosterLabels([[0, 1]], geom, learned=True)
    s = RatBpttSettings(window=3, totwindow=5, bs_d=3, bs=12, inner_lr=0.05, syn_aug="none", real_aug="none")
    net = tiny_net(torch.float64, norm="none")  # see the Adam test on instance norm and conv biases
    poster = torch.randn(1, 8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    Y = (labels.Y.double() + 0.1).requires_grad_(True)
    gP, gY = torch.autograd.grad(meta_loss(poster, Y, labels, geom, net, s, 3), (poster, Y))
    d = torch.randn_like(poster)
    dY = torch.randn_like(Y)
    eps = 1e-5
    up = meta_loss((poster + eps * d).detach(), (Y + eps * dY).detach(), labels, geom, net, s, 3).detach()
    dn = meta_loss((poster - eps * d).detach(), (Y - eps * dY).detach(), labels, geom, net, s, 3).detach()
    fd = (up - dn) / (2 * eps)
    analytic = (gP * d).sum() + (gY * dY).sum()
    assert abs(float(fd - analytic)) < 1e-5 * max(1.0, abs(float(fd)))
    assert float(gP.abs().sum()) > 0 and float(gY.abs().sum()) > 0


def test_clip_by_ema():
    s = RatBpttSettings(window=1, totwindow=2)
    g = torch.full((4,), 1.0)  # norm 2
    norm, ema = clip_by_ema(g, None, s.clip_ema, s.clip_factor)  # first value = first norm: no clipping
    assert norm == 2.0 and ema == pytest.approx(2.0) and torch.equal(g, torch.full((4,), 1.0))
    g = torch.full((4,), 5.0)  # norm 10 > 2 * 2
    norm, ema = clip_by_ema(g, 2.0, s.clip_ema, s.clip_factor)
    assert norm == 10.0 and float(g.norm()) == pytest.approx(4.0) and ema == pytest.approx(0.9 * 2 + 0.1 * 10)


def test_outer_step_updates_poster_and_keeps_labels_nonnegative():
    geom = make_geometry(1.0, 2, (8, 8), (2, 1), (3, 1))
    labels = PosterLabels([[0, 1]], geom, learned=True)
    s = RatBpttSettings(window=2, totwindow=4, bs_d=3, bs=8, lr=0.1)
    net = tiny_net()
    gen = torch.Generator().manual_seed(0)
    st = make_outer_state(torch.randn(1, 8, 16), labels.Y, s.lr, gen)
    before = st.poster.detach().clone()
    x = torch.randn(20, 1, 8, 8)
    y = torch.randint(0, 2, (20,))
    for _ in range(3):
        row = outer_step(st, net, labels, geom, x, y, s)
    assert st.step == 3 and row["step"] == 3 and torch.isfinite(torch.tensor(row["loss"]))
    assert not torch.equal(before, st.poster.detach())
    assert (st.Y >= 0).all()


def test_settings_reject_impossible_curriculum():
    with pytest.raises(PoddError, match="window"):
        RatBpttSettings(window=10, totwindow=5)


def test_soft_cross_entropy_equals_hard_on_one_hot():
    logits = torch.randn(5, 3)
    y = torch.tensor([0, 2, 1, 1, 0])
    assert torch.allclose(soft_cross_entropy(logits, torch.nn.functional.one_hot(y, 3).float()),
                          torch.nn.functional.cross_entropy(logits, y))


# ----------------------------------------------------------------------------- the fast path: same maths, faster


def _one_outer_grad(real_chunk=0, norm="instance", force_group_norm=False, monkeypatch=None, channels_last=False):
    from podd_lib.algorithms.base import RealSampler, SyntheticSet
    from podd_lib.algorithms.ratbptt import RatBptt

    if force_group_norm:
        import podd_lib.fast.block as block

        monkeypatch.setattr(block, "_under_functorch", lambda x: True)
    geom = make_geometry(1.0, 2, (8, 8), (2, 1), (3, 1))
    labels = PosterLabels([[0, 1]], geom, learned=True)
    s = RatBpttSettings(window=2, totwindow=3, bs_d=3, bs=24, inner_lr=0.01, real_chunk=real_chunk,
                        syn_aug="none", real_aug="none", channels_last=channels_last)
    torch.manual_seed(0)
    net = tiny_net(torch.float64, norm=norm)
    poster = torch.randn(1, 8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    Y = labels.Y.double().requires_grad_(True)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 1, 8, 8, dtype=torch.float64, generator=g)
    y = torch.randint(0, 2, (40,), generator=g)
    loss, info = RatBptt(net, s).meta_loss(SyntheticSet(poster, Y, labels, geom), RealSampler(x, y, 2),
                                           torch.Generator().manual_seed(3), 0)
    gP, gY = torch.autograd.grad(loss, (poster, Y))
    return info.get("loss", float(loss.detach())), gP, gY


def test_chunked_real_batch_gives_the_same_meta_gradient():
    l0, p0, y0 = _one_outer_grad(real_chunk=0)
    l1, p1, y1 = _one_outer_grad(real_chunk=7)  # 24 images in chunks of 7, 7, 7, 3
    assert l1 == pytest.approx(l0, rel=1e-12)
    assert torch.allclose(p0, p1, rtol=1e-9, atol=1e-12) and torch.allclose(y0, y1, rtol=1e-9, atol=1e-12)
    assert float(p0.abs().sum()) > 0


def test_fast_instance_norm_gives_the_same_meta_gradient(monkeypatch):
    _, p0, y0 = _one_outer_grad()
    _, p1, y1 = _one_outer_grad(force_group_norm=True, monkeypatch=monkeypatch)
    assert torch.allclose(p0, p1, rtol=1e-8, atol=1e-12) and torch.allclose(y0, y1, rtol=1e-8, atol=1e-12)


def test_channels_last_gives_the_same_meta_gradient():
    _, p0, y0 = _one_outer_grad()
    _, p1, y1 = _one_outer_grad(channels_last=True, real_chunk=10)
    assert torch.allclose(p0, p1, rtol=1e-8, atol=1e-12) and torch.allclose(y0, y1, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_block_gives_the_same_poster_after_three_outer_steps(monkeypatch, channels_last):
    """The fused ConvNet block and channels-last change kernels, not results (float64)."""
    import podd_lib.fast.block as block

    def posters(plain_layers):
        if plain_layers:
            monkeypatch.setattr(block, "_under_functorch", lambda t: True)
        geom = make_geometry(1.0, 2, (8, 8), (2, 1), (3, 1))
        labels = PosterLabels([[0, 1]], geom, learned=True)
        s = RatBpttSettings(window=2, totwindow=4, bs_d=3, bs=16, inner_lr=0.01, real_chunk=5,
                            channels_last=channels_last and not plain_layers)
        torch.manual_seed(0)
        net = make_model("convnet", channels=1, num_classes=2, im_size=(8, 8), width=4, depth=2).double()
        poster = torch.randn(1, 8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        st = make_outer_state(poster, labels.Y.double(), s.lr, torch.Generator().manual_seed(3))
        g = torch.Generator().manual_seed(2)
        x, y = torch.randn(40, 1, 8, 8, dtype=torch.float64, generator=g), torch.randint(0, 2, (40,), generator=g)
        for _ in range(3):
            outer_step(st, net, labels, geom, x, y, s)
        monkeypatch.undo()
        return st.poster.detach(), st.Y.detach()

    (p0, y0), (p1, y1) = posters(plain_layers=True), posters(plain_layers=False)
    assert torch.allclose(p0, p1, rtol=1e-9, atol=1e-10) and torch.allclose(y0, y1, rtol=1e-9, atol=1e-10)
    assert not torch.allclose(p0, torch.randn(1, 8, 16, dtype=torch.float64,
                                              generator=torch.Generator().manual_seed(1)), atol=1e-4)  # it moved


def test_bfloat16_convolutions_keep_the_meta_gradient_close():
    """conv_dtype=bfloat16 changes numbers (so it is opt-in); the meta-gradient stays close to float32's."""

    def meta_grad(cdt):
        torch.manual_seed(0)
        net = make_model("convnet", channels=1, num_classes=2, im_size=(8, 8), width=16, depth=2)
        net.conv_dtype = cdt
        return small_meta_grad(net, channels=1)

    ref, bf = meta_grad(None), meta_grad(torch.bfloat16)
    cos = float(ref @ bf / ref.norm() / bf.norm())
    assert 0.95 < cos < 1 - 1e-7, cos  # close, and not the same numbers


def test_conv_dtype_config():
    from podd_lib.config import resolve_config
    from podd_lib.run import model_for
    from podd_lib.kit.experiments import config_key

    cfg = resolve_config("cifar10", 1.0, "smoke", {"conv_dtype": "bfloat16"})
    assert model_for(cfg, 3).conv_dtype is torch.bfloat16
    assert model_for(resolve_config("cifar10", 1.0, "smoke"), 3).conv_dtype is None
    assert config_key(cfg) != config_key(resolve_config("cifar10", 1.0, "smoke"))  # changes results: hashed
    with pytest.raises(PoddError, match="conv_dtype must be"):
        resolve_config("cifar10", 1.0, "smoke", {"conv_dtype": "float16"})
    with pytest.raises(PoddError, match="needs fused_blocks"):
        resolve_config("cifar10", 1.0, "smoke", {"conv_dtype": "bfloat16", "fused_blocks": False})
    with pytest.raises(PoddError, match="needs fused_blocks"):  # no fused block, nothing to run in bfloat16
        resolve_config("cifar10", 1.0, "smoke", {"conv_dtype": "bfloat16", "norm": "batch"})


def test_adam_step_t_equals_adam_step():
    """The tensor-step Adam of the compiled path makes the same update as the eager one, step after step."""
    from podd_lib.optim import adam_step_t

    gen = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(5, 3, generator=gen), "b": torch.randn(3, generator=gen)}
    state = adam_init(params)
    p_t, m_t, v_t = dict(params), dict(state.m), dict(state.v)
    for step in range(1, 4):
        grads = {k: torch.randn(p.shape, generator=gen) for k, p in params.items()}
        params, state = adam_step(params, grads, state, lr=1e-2)
        p_t, m_t, v_t = adam_step_t(p_t, grads, m_t, v_t, torch.tensor(float(step), dtype=torch.float64), lr=1e-2)
        for k in params:
            torch.testing.assert_close(p_t[k], params[k], rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(v_t[k], state.v[k])
