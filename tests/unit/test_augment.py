"""Augmentation: determinism, identities, gradients, shapes, model axis, bad input."""

import pytest
import torch

from podd_lib import augment as A
from podd_lib.errors import PoddError


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_g(99))


STRATEGIES = ["flip_rotate", "none", A.DSA_STRATEGY, *A.OPS]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("mode", A.MODES)
def test_deterministic_shape_preserving_and_differentiable(strategy, mode):
    x = _x(6, 3, 16, 16).requires_grad_()
    a, b = A.augment(x, strategy, _g(1), mode), A.augment(x, strategy, _g(1), mode)
    assert a.shape == x.shape
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    (gx,) = torch.autograd.grad((a * torch.randn_like(a)).sum(), x)
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0


@pytest.mark.parametrize("name", list(A.OPS))
def test_each_op_changes_images_and_depends_on_seed(name):
    x = _x(8, 3, 16, 16)
    a, b = A.OPS[name](x, _g(1)), A.OPS[name](x, _g(2))
    assert not torch.equal(a, x) and not torch.equal(a, b)


def test_flip_of_flip_is_identity_and_mirrors():
    x = _x(10, 3, 8, 8)
    mask = torch.rand(10, generator=_g(3)) < 0.5
    once = A.flip_with(x, mask)
    torch.testing.assert_close(A.flip_with(once, mask), x, rtol=0, atol=0)
    torch.testing.assert_close(once[mask], x[mask].flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(once[~mask], x[~mask], rtol=0, atol=0)


def test_zero_rotation_scale_one_and_zero_shift_are_identity():
    x = _x(4, 3, 16, 12)
    zero = torch.zeros(4)
    torch.testing.assert_close(A.rotate_by(x, zero), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(A.scale_by(x, zero + 1, zero + 1), x, atol=1e-5, rtol=0)
    z = torch.zeros(4, dtype=torch.long)
    torch.testing.assert_close(A.translate_by(x, z, z), x, rtol=0, atol=0)


def test_rotate_90_degrees_matches_rot90():
    x = _x(2, 1, 8, 8)
    out = A.rotate_by(x, torch.full((2,), 90.0))
    ok = torch.allclose(out, x.rot90(1, (-2, -1)), atol=1e-5) or \
        torch.allclose(out, x.rot90(-1, (-2, -1)), atol=1e-5)
    assert ok


def test_translate_and_cutout_exact():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = A.translate_by(x, torch.tensor([1]), torch.tensor([-1]))
    expected = torch.tensor([[0, 0, 0, 0], [1, 2, 3, 0], [5, 6, 7, 0], [9, 10, 11, 0.0]])
    torch.testing.assert_close(out[0, 0], expected)
    cut = A.cutout_at(torch.ones(1, 1, 4, 4), torch.tensor([2]), torch.tensor([2]), (2, 2))
    assert cut.sum() == 12 and cut[0, 0, 1:3, 1:3].sum() == 0


def test_color_identity_factors():
    x = _x(3, 3, 8, 8)
    one, zero = torch.ones(3), torch.zeros(3)
    torch.testing.assert_close(A.color_with(x, zero, one, one), x, atol=1e-6, rtol=0)


def test_flip_rotate_picks_one_op_per_batch():
    x = _x(16, 3, 16, 16)
    seen = set()
    for seed in range(20):
        out = A.flip_rotate(x, _g(seed))
        per_image_flip_or_same = all(torch.equal(o, i) or torch.equal(o, i.flip(-1))
                                     for o, i in zip(out, x))
        seen.add("flip" if per_image_flip_or_same else "rotate")
    assert seen == {"flip", "rotate"}


def test_model_axis_each_image_and_model_own_randomness():
    x = _x(3, 1, 3, 16, 16).expand(3, 5, 3, 16, 16).contiguous()  # same image everywhere
    for strategy, mode in [("rotate", "single"), ("flip_rotate", "single"), (A.DSA_STRATEGY, "all")]:
        out = A.augment(x, strategy, _g(4), mode)
        assert out.shape == x.shape
        flat = out.flatten(0, 1)
        assert len({tuple(o.flatten()[:64].tolist()) for o in flat}) > 3
    # a model axis gives the same result as the flat batch for a single op
    torch.testing.assert_close(A.rotate(x, _g(5)).flatten(0, 1), A.rotate(x.flatten(0, 1), _g(5)))


def test_bad_input_raises():
    x = _x(2, 3, 8, 8)
    with pytest.raises(PoddError, match="unknown augmentation op 'blur'"):
        A.augment(x, "flip_blur", _g())
    with pytest.raises(PoddError, match="unknown augmentation mode"):
        A.augment(x, "flip", _g(), mode="some")
    with pytest.raises(PoddError, match="expects float images"):
        A.augment(torch.zeros(3, 8, 8), "flip", _g())
    with pytest.raises(PoddError, match="must be a string"):
        A.augment(x, None, _g())  # type: ignore[arg-type]
