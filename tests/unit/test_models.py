"""Networks: shapes, instance norm = GroupNorm(C, C), vmap over stacked models, double backward."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from podd_lib.errors import PoddError
from podd_lib.models import (ARCHS, ConvNet, InstanceNorm, fresh_params, is_vmappable,
                             make_model, seed_from, seeded_model, stacked_fresh)


@pytest.mark.parametrize("side,depth", [(32, 3), (64, 4)])
def test_convnet_shapes_and_default_depth(side, depth):
    net = make_model("convnet", 3, 10, (side, side), width=16)
    assert len([m for m in net.modules() if isinstance(m, nn.Conv2d)]) == depth
    assert net(torch.randn(2, 3, side, side)).shape == (2, 10)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("side", [32, 64])
def test_every_arch_shapes(arch, side):
    net = make_model(arch, 3, 7, side, width=8)
    assert net(torch.randn(2, 3, side, side)).shape == (2, 7)


def test_norm_and_pool_options():
    for norm in ("instance", "batch", "none"):
        for pool in ("avg", "max"):
            net = make_model("convnet", 1, 4, (16, 16), width=8, norm=norm, pool=pool)
            assert net(torch.randn(3, 1, 16, 16)).shape == (3, 4)
    assert not is_vmappable(make_model("convnet", 3, 10, 32, width=8, norm="batch"))
    assert is_vmappable(make_model("resnet18", 3, 10, 32))


def test_bad_names_raise():
    with pytest.raises(PoddError, match="unknown architecture"):
        make_model("lenet", 3, 10, 32)
    with pytest.raises(PoddError, match="unknown norm"):
        make_model("convnet", 3, 10, 32, norm="layer")
    with pytest.raises(PoddError, match="unknown pool"):
        make_model("convnet", 3, 10, 32, pool="sum")
    with pytest.raises(PoddError, match="too small"):
        ConvNet(im_size=(4, 4), depth=3)


def test_instance_norm_matches_groupnorm():
    torch.manual_seed(0)
    ours, ref = InstanceNorm(16), nn.GroupNorm(16, 16)
    with torch.no_grad():
        for m in (ours, ref):
            m.weight.copy_(torch.linspace(0.5, 2.0, 16))
            m.bias.copy_(torch.linspace(-1.0, 1.0, 16))
    x = torch.randn(4, 16, 8, 8) * 3 + 1
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_vmap_over_stacked_models_equals_separate_forwards():
    fn = lambda: ConvNet(3, 10, width=8, depth=3, im_size=(32, 32))  # noqa: E731
    seeds = [1, 2, 3]
    params, buffers = stacked_fresh(fn, seeds)
    base = fn().to("meta")
    x = torch.randn(3, 5, 3, 32, 32)
    out = vmap(lambda p, b, xi: functional_call(base, (p, b), (xi,)))(params, buffers, x)
    for k, s in enumerate(seeds):
        torch.testing.assert_close(out[k], seeded_model(fn, s)(x[k]), atol=1e-5, rtol=1e-5)


def test_double_backward_through_convnet():
    net = ConvNet(3, 10, width=8, depth=3)
    params = {k: v.detach().requires_grad_() for k, v in net.named_parameters()}
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    loss = functional_call(net, params, (x,)).logsumexp(-1).mean()
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    gnorm = sum(g.pow(2).sum() for g in grads)
    (gx,) = torch.autograd.grad(gnorm, x)
    assert gx.shape == x.shape and torch.isfinite(gx).all() and gx.abs().sum() > 0


def test_fresh_params_reproducible_and_leaves_global_rng():
    fn = lambda: ConvNet(3, 10, width=8, depth=2, im_size=(16, 16))  # noqa: E731
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = fresh_params(fn, 7), fresh_params(fn, 7), fresh_params(fn, 8)
    assert torch.rand(1) == before
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert seed_from(g1) == seed_from(g2)


def test_instance_norm_second_derivatives_are_exact():
    norm = InstanceNorm(2).double()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, dtype=torch.float64, requires_grad=True)
    f = lambda x, w: functional_call(norm, {"weight": w, "bias": norm.bias}, (x,))  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (x, w))


# ----------------------------------------------------------------------------- fast instance norm (podd_lib.fast.block)


def _norm_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64, generator=g).requires_grad_(True)
    w = torch.randn(4, dtype=torch.float64, generator=g).requires_grad_(True)
    b = torch.randn(4, dtype=torch.float64, generator=g).requires_grad_(True)
    return x, w, b


def test_instance_norm_function_passes_gradcheck_and_gradgradcheck():
    from podd_lib.fast.block import _InstanceNormFn

    x, w, b = _norm_inputs()
    f = lambda x, w, b: _InstanceNormFn.apply(x, w, b, 1e-5)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_instance_norm_double_backward_equals_group_norm():
    """The hand-written double backward gives group_norm's second derivatives (float64, 1e-9)."""
    from podd_lib.fast.block import _InstanceNormFn

    def second(fn):
        x, w, b = _norm_inputs()
        y = fn(x, w, b)
        gy = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1))
        gs = torch.autograd.grad((y * gy).sum() + (y ** 3).sum(), (x, w, b), create_graph=True)
        s = (gs[0] ** 2).sum() + (gs[0] * x).sum() + (gs[1] ** 2).sum() + (gs[2] * w).sum()
        return torch.autograd.grad(s, (x, w, b))

    ours = second(lambda x, w, b: _InstanceNormFn.apply(x, w, b, 1e-5))
    ref = second(lambda x, w, b: F.group_norm(x, 4, w, b, 1e-5))
    for a, r in zip(ours, ref):
        assert torch.allclose(a, r, atol=1e-9, rtol=1e-9)
    bad = second(lambda x, w, b: F.group_norm(x, 4, w, b, 1e-1))  # the comparison can fail
    assert not torch.allclose(bad[0], ref[0], atol=1e-6)


def test_instance_norm_module_uses_group_norm_under_vmap():
    torch.manual_seed(0)
    norm = InstanceNorm(4)
    x = torch.randn(2, 3, 4, 5, 5)
    out = torch.func.vmap(norm)(x)
    assert torch.allclose(out, torch.stack([F.group_norm(xi, 4, norm.weight, norm.bias, 1e-5) for xi in x]), atol=1e-6)


def test_instance_norm_channels_last_path_matches_group_norm():
    """Non-contiguous (channels-last) inputs take the hand-written first-order path too."""
    from podd_lib.fast.block import _InstanceNormFn

    x, w, b = _norm_inputs(3)
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert not xc.is_contiguous()
    f = lambda x, w, b: _InstanceNormFn.apply(x, w, b, 1e-5)  # noqa: E731
    assert torch.autograd.gradcheck(f, (xc, w, b))
    assert torch.autograd.gradgradcheck(f, (xc, w, b))
    gy = torch.randn(x.shape, dtype=x.dtype)
    ours = torch.autograd.grad((f(xc, w, b) * gy).sum(), (xc, w, b))
    ref = torch.autograd.grad((F.group_norm(x, 4, w, b, 1e-5) * gy).sum(), (x, w, b))
    for a, r in zip(ours, ref):
        assert torch.allclose(a, r, atol=1e-10)


# ----------------------------------------------------------------------------- a ConvNet block as one op (podd_lib.fast.block)


def _block_inputs(fmt, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 2, 4, 6, dtype=torch.float64, generator=g).contiguous(memory_format=fmt)
    W = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=g)
    cb, gamma, beta = (torch.randn(3, dtype=torch.float64, generator=g) for _ in range(3))
    return [t.requires_grad_(True) for t in (x, W, cb, gamma + 2, beta)]


def _block_ref(x, W, cb, gamma, beta):
    return F.avg_pool2d(F.relu(F.group_norm(F.conv2d(x, W, cb, padding=1), W.shape[0], gamma, beta, 1e-5)), 2)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_conv_block_passes_gradcheck_and_gradgradcheck(fmt):
    from podd_lib.fast.block import _ConvBlockFn

    f = lambda *a: _ConvBlockFn.apply(*a, 1e-5)[0]  # noqa: E731
    args = _block_inputs(fmt)
    assert torch.allclose(f(*args), _block_ref(*args), atol=1e-12)
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)
    both = lambda *a: _ConvBlockFn.apply(*a, 1e-5)  # noqa: E731  (z, the conv output, takes gradients too)
    assert torch.allclose(both(*args)[1], F.conv2d(args[0], args[1], args[2], padding=1), atol=1e-12)
    assert torch.autograd.gradcheck(both, args)
    assert torch.autograd.gradgradcheck(both, args)
    x0 = args[0].detach()  # the first block of an inner step: its input (the patches) not differentiated
    assert torch.autograd.gradgradcheck(lambda *a: f(x0, *a), args[1:])
    assert torch.autograd.gradgradcheck(lambda *a: both(x0, *a), args[1:])


def test_conv_block_second_derivatives_equal_autograd_of_the_layers():
    """The outer meta-gradient path: d/d(x, W, gamma) of a function of the first-order gradients."""
    from podd_lib.fast.block import _ConvBlockFn

    def second(fn):
        x, W, cb, gamma, beta = _block_inputs(torch.channels_last, 4)
        p = fn(x, W, cb, gamma, beta)
        gp = torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(1))
        gs = torch.autograd.grad((p * gp).sum() + (p ** 2).sum(), (x, W, cb, gamma, beta), create_graph=True)
        s = sum((g ** 2).sum() for g in gs) + (gs[1] * W).sum()
        return torch.autograd.grad(s, (x, W, cb, gamma))

    ours = second(lambda *a: _ConvBlockFn.apply(*a, 1e-5)[0])
    ref = second(_block_ref)
    for a, r in zip(ours, ref):
        assert torch.allclose(a, r, atol=1e-9, rtol=1e-9)
    bad = second(lambda x, W, cb, g, b: _block_ref(x, W, cb, g * 1.01, b))  # the comparison can fail
    assert not torch.allclose(bad[0], ref[0], atol=1e-6)


def test_convnet_uses_the_fused_block_and_matches_the_layers(monkeypatch):
    import podd_lib.fast.block as block

    torch.manual_seed(0)
    net = ConvNet(3, 10, width=8, depth=2, im_size=(8, 8)).double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    calls = []
    real_apply = block._ConvBlockFn.apply
    monkeypatch.setattr(block._ConvBlockFn, "apply", lambda *a: calls.append(1) or real_apply(*a))
    out = net(x)
    assert len(calls) == 2
    monkeypatch.setattr(block, "_under_functorch", lambda t: True)  # the plain layers
    assert torch.allclose(out, net(x), atol=1e-12)
    assert len(calls) == 2


def test_convnet_odd_feature_maps_take_the_plain_layers():
    torch.manual_seed(0)
    net = ConvNet(3, 10, width=4, depth=3, im_size=(12, 12)).double()  # 12 -> 6 -> 3: the last block is odd
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    ref = F.linear(torch.nn.Sequential(*net.features)(x).flatten(1), net.classifier.weight, net.classifier.bias)
    assert torch.allclose(net(x), ref, atol=1e-12)


def test_fused_blocks_switch_from_the_config(monkeypatch):
    import podd_lib.fast.block as block
    from podd_lib.config import resolve_config
    from podd_lib.run import model_for
    from podd_lib.errors import PoddError

    calls = []
    real_apply = block._ConvBlockFn.apply
    monkeypatch.setattr(block._ConvBlockFn, "apply", lambda *a: calls.append(1) or real_apply(*a))
    x = torch.randn(2, 3, 32, 32)
    on = model_for(resolve_config("cifar10", 1.0, "smoke"), 3)
    off = model_for(resolve_config("cifar10", 1.0, "smoke", {"fused_blocks": False}), 3)
    off.load_state_dict(on.state_dict())
    assert on.fused_blocks and not off.fused_blocks
    assert torch.allclose(on(x), off(x), atol=1e-5)
    assert len(calls) == 3  # the depth-3 network's blocks, from `on` only
    with pytest.raises(PoddError, match="fused_blocks must be true or false"):
        resolve_config("cifar10", 1.0, "smoke", {"fused_blocks": "maybe"})


def test_fused_norm_kernel_only_where_pytorch_accepts_the_layout():
    """CUDA's native_group_norm rejects channels-last input; only the CPU gets it in that layout."""
    from podd_lib.fast.block import _native_norm_ok

    cl = torch.channels_last
    assert _native_norm_ok(torch.empty(2, 4, 6, 6)) and _native_norm_ok(torch.empty(2, 4, 6, 6, memory_format=cl))
    assert _native_norm_ok(torch.empty(2, 4, 6, 6, device="meta"))
    assert not _native_norm_ok(torch.empty(2, 4, 6, 6, device="meta", memory_format=cl))  # any non-CPU device
    net = ConvNet(3, 10, width=8, depth=2, im_size=(8, 8)).to("meta")  # the fallback runs, grads and all
    x = torch.empty(4, 3, 8, 8, device="meta", memory_format=cl).requires_grad_(True)
    g = torch.autograd.grad(net(x).sum(), [x, *net.parameters()], create_graph=True)
    assert torch.autograd.grad(sum((t * t).sum() for t in g), x)[0].shape == x.shape
