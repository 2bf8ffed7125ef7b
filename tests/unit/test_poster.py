"""Poster geometry (plain arithmetic), patch extraction against slicing, initialisations."""

import math

import pytest
import torch

from podd_lib.errors import PoddError
from podd_lib.poster import (
    class_area_boxes,
    extract_patches,
    blend_areas,
    init_class_areas,
    init_poster,
    linspace_offsets,
    make_geometry,
    pixel_budget,
    poster_size,
    tiling_geometry,
)


def test_linspace_offsets_rule():
    assert linspace_offsets(160, 32, 5) == [0, 32, 64, 96, 128]
    assert linspace_offsets(153, 32, 16) == [round(121 * i / 15) for i in range(16)]
    assert linspace_offsets(32, 32, 1) == [0]


@pytest.mark.parametrize("ipc", [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
@pytest.mark.parametrize("n,hw,grid", [(10, 32, (5, 2)), (100, 32, (10, 10)), (200, 32, (20, 10)), (200, 64, (20, 10))])
def test_poster_never_exceeds_budget(ipc, n, hw, grid):
    d_h, d_w = poster_size(ipc, n, hw, hw, *grid)
    assert d_h * d_w <= ipc * n * hw * hw + 1e-6
    # ... and wastes less than one column of the budget
    assert d_h * (d_w + 1) > pixel_budget(ipc, n, hw, hw)


def test_cifar10_09_geometry():
    g = make_geometry(0.9, 10, (32, 32), (5, 2), (16, 6))
    assert g.n_patches == 96
    assert g.pixels <= 0.9 * 10 * 32 * 32
    assert math.isclose(g.ipc, g.pixels / 10240)
    assert g.ipc > 0.89


def test_cifar100_04_is_202_square():
    assert poster_size(0.4, 100, 32, 32, 10, 10) == (202, 202)  # paper section 1


def test_release_poster_size_accepted_and_over_budget_rejected():
    g = make_geometry(0.9, 10, (32, 32), (5, 2), (16, 6), size=(60, 153))
    assert (g.d_h, g.d_w) == (60, 153)
    with pytest.raises(PoddError, match="more than IPC"):
        make_geometry(0.9, 10, (32, 32), (5, 2), (16, 6), size=(64, 160))


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(ipc=0.0), "IPC must be a positive"),
        (dict(ipc=-1.0), "IPC must be a positive"),
        (dict(class_grid=(5, 3)), "class grid 5x3 holds 15 cells but the dataset has 10"),
        (dict(ipc=0.05), "smaller than one 32x32 patch"),
        (dict(patch_grid=(2, 6)), "leave gaps"),
        (dict(patch_grid=(16, 0)), "at least 1 patch"),
        (dict(patch_grid=(1, 6)), "1 patch along x cannot cover"),
    ],
)
def test_bad_geometry_fails_in_one_line(kwargs, msg):
    args = dict(ipc=1.0, n_classes=10, image_size=(32, 32), class_grid=(5, 2), patch_grid=(16, 6))
    args.update(kwargs)
    with pytest.raises(PoddError, match=msg) as e:
        make_geometry(**args)
    assert "\n" not in str(e.value)


def test_tiling_is_the_ratbptt_baseline():
    g = tiling_geometry(10, (32, 32), (5, 2))
    assert g.is_tiling and g.n_patches == 10 and (g.d_h, g.d_w) == (64, 160)
    poster = torch.randn(3, 64, 160)
    patches = extract_patches(poster, g)
    # x-major: patch k = i * p_y + j at (y_j, x_i); every pixel used exactly once
    for i in range(5):
        for j in range(2):
            assert torch.equal(patches[i * 2 + j], poster[:, 32 * j : 32 * j + 32, 32 * i : 32 * i + 32])


def test_extraction_matches_slicing_values_and_gradients():
    g = make_geometry(0.9, 10, (32, 32), (5, 2), (16, 6))
    poster = torch.randn(3, g.d_h, g.d_w, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(g.n_patches, 3, 32, 32, dtype=torch.float64)
    fast = extract_patches(poster, g)
    (gf,) = torch.autograd.grad((fast * weights).sum(), poster)
    slow = torch.stack([poster[:, y : y + 32, x : x + 32] for x in g.xs for y in g.ys])
    (gs,) = torch.autograd.grad((slow * weights).sum(), poster)
    assert torch.equal(fast, slow)
    assert torch.allclose(gf, gs, atol=1e-12)
    idx = torch.tensor([5, 0, 95])
    assert torch.equal(extract_patches(poster, g, idx), slow[idx])


def test_class_area_init_is_normalised_and_blended():
    g = tiling_geometry(10, (32, 32), (5, 2))
    order = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    p = init_class_areas(g, 3, order, torch.Generator().manual_seed(0))
    assert p.shape == (3, 64, 160)
    # no overlap at 1 IPC tiling: every class area keeps unit L2 norm
    for r in range(2):
        for c in range(5):
            assert math.isclose(float(p[:, 32 * r : 32 * r + 32, 32 * c : 32 * c + 32].norm()), 1.0, rel_tol=1e-5)
    g2 = make_geometry(0.5, 10, (32, 32), (5, 2), (16, 6))
    p2 = init_poster(g2, 3, "class_areas", order, torch.Generator().manual_seed(0))
    assert p2.shape == (3, g2.d_h, g2.d_w) and torch.isfinite(p2).all()
    ys, xs, a_h, a_w = class_area_boxes(g2)
    assert xs[-1] + a_w == g2.d_w and ys[-1] + a_h == g2.d_h
    with pytest.raises(PoddError, match="unknown poster init"):
        init_poster(g2, 3, "zeros", order)


def test_class_area_blend_is_the_release_s_sequential_fade():
    """At 0.9 IPC (areas 32x32 overlapping by 1-3 px) the blend equals the release's row-then-column fades."""
    g = make_geometry(0.9, 10, (32, 32), (5, 2), (16, 6))
    order = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    areas = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ys, xs, a_h, a_w = class_area_boxes(g)
    assert (a_h, a_w) == (32, 32) and min(xs[i] + 32 - xs[i + 1] for i in range(4)) >= 1 and ys[0] + 32 > ys[1]

    def fade(prev_end: int, start: int, end: int, length: int) -> torch.Tensor:
        """Weight of what is blended so far: 1 before the overlap, 1 - linspace(0, 1) across it, 0 after."""
        m = torch.zeros(length)
        m[:start] = 1
        m[start:prev_end] = 1 - torch.linspace(0, 1, prev_end - start)
        return m

    rows = []
    for r, y in enumerate(ys):
        row = torch.zeros(3, 32, g.d_w)
        row[:, :, xs[0]:xs[0] + 32] = areas[order[r][0]]
        for c in range(1, 5):
            nxt = torch.zeros(3, 32, g.d_w)
            nxt[:, :, xs[c]:xs[c] + 32] = areas[order[r][c]]
            m = fade(xs[c - 1] + 32, xs[c], xs[c] + 32, g.d_w)
            row = row * m + nxt * (1 - m)
        rows.append(row)
    top, bottom = torch.zeros(3, g.d_h, g.d_w), torch.zeros(3, g.d_h, g.d_w)
    top[:, ys[0]:ys[0] + 32], bottom[:, ys[1]:ys[1] + 32] = rows[0], rows[1]
    m = fade(ys[0] + 32, ys[1], ys[1] + 32, g.d_h)[:, None]
    torch.testing.assert_close(blend_areas(g, areas, order), top * m + bottom * (1 - m), atol=1e-6, rtol=0)


def test_normal_init_is_seeded():
    g = make_geometry(1.0, 10, (32, 32), (5, 2), (16, 6))
    a = init_poster(g, 3, "normal", [[0] * 5] * 2, torch.Generator().manual_seed(1))
    b = init_poster(g, 3, "normal", [[0] * 5] * 2, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and abs(float(a.std()) - 1) < 0.05
