"""The compiled CPU kernels of the fused ConvNet block (podd_lib/fast/kernels.py): same maths as the PyTorch ops."""

import pytest
import torch
import torch.nn.functional as F

from podd_lib.fast import kernels
from podd_lib import models as M
from podd_lib.fast import block as B
from tests.helpers import small_meta_grad

CL = torch.channels_last


@pytest.fixture(scope="module")
def lib():
    if kernels._compiler() is None:
        pytest.skip("no C++ compiler on this machine: the PyTorch ops run instead")
    out = kernels.load()
    assert out is not None, "the kernels failed to build or load"
    return out


def _case(n, c, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, c, h, w, generator=g) * 2 + 0.5).contiguous(memory_format=CL)
    gam, bet = torch.randn(c, generator=g), torch.randn(c, generator=g)
    gp = torch.randn(n, c, h // 2, w // 2, generator=g).contiguous(memory_format=CL)
    u = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=CL)
    a, b = torch.randn(c, generator=g), torch.randn(c, generator=g)
    return z, gam, bet, gp, u, a, b


def _close(got, want, tol=1e-5):
    """Float32 kernel against a float64 reference: max error relative to the reference's scale."""
    return float((got.double() - want).abs().max() / want.abs().max()) < tol


SHAPES = [(3, 7, 6, 4), (5, 16, 8, 8), (4, 128, 32, 32)]


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_norm_relu_pool(lib, shape):
    z, gam, bet, *_ = _case(*shape)
    p, mean, rstd = kernels.block_forward(lib, z, gam, bet, 1e-5)
    y, m0, r0 = B._fused_norm(z.double(), gam.double(), bet.double(), 1e-5)
    assert _close(p, F.avg_pool2d(y.relu(), 2)) and _close(mean, m0) and _close(rstd, r0)
    assert p.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_extra", [False, True])
def test_zgrad_matches_the_pytorch_backward(lib, shape, with_extra):
    z, gam, bet, gp, u, *_ = _case(*shape)
    _, mean, rstd = kernels.block_forward(lib, z, gam, bet, 1e-5)
    gz, gg, gb = kernels.block_zgrad(lib, gp, z, gam, bet, mean, rstd, u if with_extra else None)
    D = lambda t: t.double()  # noqa: E731
    gz0, gg0, gb0 = B._z_grad(D(gp), D(z), D(gam), D(bet), D(mean), D(rstd))
    assert _close(gz, gz0 + (D(u) if with_extra else 0)) and _close(gg, gg0) and _close(gb, gb0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("upstream", ["u,a,b", "a,b", "u"])
def test_double_backward_matches_the_pytorch_formulas(lib, shape, upstream):
    z, gam, bet, gp, u, a, b = _case(*shape)
    u, a, b = (u if "u" in upstream else None), (a if "a" in upstream else None), (b if "b" in upstream else None)
    _, mean, rstd = kernels.block_forward(lib, z, gam, bet, 1e-5)
    gz, d_gp, d_z, d_gam = kernels.block_double(lib, gp, z, gam, bet, mean, rstd, u, a, b, want_gz=True)
    D = lambda t: None if t is None else t.double()  # noqa: E731
    zd, gd, bd, md, rd = D(z), D(gam), D(bet), D(mean), D(rstd)
    mask = B._relu_mask(zd, gd, bd, md, rd)
    gy = B._unpool_masked_(mask.clone(), D(gp))
    d_gy, d_z0, d_gam0 = B._norm_double_backward(D(u), D(a), D(b), gy, zd, gd, md, rd)
    assert _close(gz, B._norm_backward(gy, zd, gd, md, rd)[0])
    assert _close(d_gp, F.avg_pool2d(d_gy * mask, 2)) and _close(d_z, d_z0)
    assert (d_gam is None) == (d_gam0 is None) and (d_gam is None or _close(d_gam, d_gam0))
    # and a wrong reference fails: the comparison can tell
    assert not _close(d_z, d_z0 * 1.001)


def _meta_grad(cpu_kernels: bool):
    torch.manual_seed(0)
    net = M.make_model("convnet", channels=3, num_classes=2, im_size=(8, 8), width=16, depth=2)
    net.cpu_kernels = cpu_kernels
    return small_meta_grad(net, channels=3)


def test_rat_bptt_meta_gradient_is_the_same_with_and_without_kernels(lib, monkeypatch):
    calls = []
    for name in ("block_forward", "block_zgrad", "block_double"):
        fn = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _f=fn, _n=name, **k: calls.append(_n) or _f(*a, **k))
    with_k = _meta_grad(True)
    assert {"block_forward", "block_zgrad", "block_double"} <= set(calls)  # all three ran
    n = len(calls)
    without = _meta_grad(False)
    assert len(calls) == n  # none ran
    assert torch.allclose(with_k, without, rtol=1e-4, atol=1e-6 * float(without.abs().max()))
    assert float(without.abs().sum()) > 0


def test_first_block_input_gradient_is_skipped_when_the_inner_gradient_does_not_use_it(monkeypatch):
    """Unrolled steps take the inner gradient for the weights only: the first conv's input gradient is not computed."""
    seen = []
    orig = B._conv_grads
    monkeypatch.setattr(B, "_conv_grads", lambda gz, x, w, need_x, *a, **k: seen.append((w.shape[1], need_x))
                        or orig(gz, x, w, need_x, *a, **k))
    net = M.make_model("convnet", channels=3, num_classes=2, im_size=(8, 8), width=4, depth=2).double()
    src = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    loss = net(src * 2).square().sum()
    params = list(net.parameters())
    torch.autograd.grad(loss, params, create_graph=True, retain_graph=True)
    assert (3, False) in seen and (3, True) not in seen  # first block (3 input channels): no input gradient
    seen.clear()
    torch.autograd.grad(loss, [src])
    assert (3, True) in seen


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setenv("PODD_CPU_KERNELS", "0")
    assert kernels.load() is None


def test_a_failed_build_warns_once_and_falls_back_to_pytorch(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setenv("PODD_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    with pytest.warns(RuntimeWarning, match="fused CPU kernels unavailable"):
        assert kernels.load() is None
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind
    net = M.make_model("convnet", channels=1, num_classes=2, im_size=(8, 8), width=4, depth=2)
    x = torch.randn(2, 1, 8, 8).contiguous(memory_format=CL)
    assert net(x).shape == (2, 2)  # the PyTorch ops ran


def test_build_is_cached_and_keyed_by_source(lib, monkeypatch, tmp_path):
    monkeypatch.setenv("PODD_KERNEL_CACHE", str(tmp_path))
    first = kernels.build()
    mtime = first.stat().st_mtime_ns
    assert kernels.build() == first and first.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_applies_only_to_float32_channels_last_cpu_tensors_with_even_sides():
    z = torch.randn(2, 8, 4, 4)
    assert kernels.applies(z.contiguous(memory_format=CL))
    assert not kernels.applies(z)  # NCHW
    assert not kernels.applies(z.double().contiguous(memory_format=CL))
    assert not kernels.applies(torch.randn(2, 8, 5, 4).contiguous(memory_format=CL))


def test_cpu_kernels_config_is_validated_and_not_hashed():
    from podd_lib.config import resolve_config
    from podd_lib.run import model_for
    from podd_lib.errors import PoddError
    from podd_lib.kit.experiments import config_key

    on = resolve_config("cifar10", 1.0, "paper", {})
    off = resolve_config("cifar10", 1.0, "paper", {"cpu_kernels": False})
    assert on.cpu_kernels is True and config_key(on) == config_key(off)
    off = off.replace(n_classes=10, image_size=[32, 32])
    assert model_for(off, 3).cpu_kernels is False
    with pytest.raises(PoddError, match="cpu_kernels must be true or false"):
        resolve_config("cifar10", 1.0, "paper", {"cpu_kernels": "yes"})


def test_scratch_gradients_reuse_one_buffer_and_equal_fresh_ones(lib):
    z, gam, bet, gp, u, a, b = _case(4, 16, 8, 8)
    _, mean, rstd = kernels.block_forward(lib, z, gam, bet, 1e-5)
    fresh = kernels.block_zgrad(lib, gp, z, gam, bet, mean, rstd)[0]
    first = kernels.block_zgrad(lib, gp, z, gam, bet, mean, rstd, scratch=True)[0]
    assert torch.equal(first, fresh) and first.is_contiguous(memory_format=CL)
    ptr = first.data_ptr()
    second = kernels.block_double(lib, gp, z, gam, bet, mean, rstd, u, a, b, want_gz=True, scratch=True)[0]
    assert second.data_ptr() == ptr and torch.equal(second, fresh)  # the same buffer, overwritten
    small = kernels.block_zgrad(lib, gp[:2], z[:2], gam, bet, mean[:2], rstd[:2], scratch=True)[0]
    assert small.data_ptr() == ptr and torch.equal(small, fresh[:2])  # a smaller batch fits the same buffer


def test_an_unwritable_cache_falls_back_to_the_temp_folder(lib, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PODD_KERNEL_CACHE", str(blocker / "kernels"))  # cannot be created
    monkeypatch.setattr(kernels.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    out = kernels.build()
    assert out.parent.parent == tmp_path / "tmp" and out.exists()
