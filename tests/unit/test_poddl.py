"""PoDDL: fixed labels (majority, ties shared) and learned labels (window pooling, L1, clipping)."""

import pytest
import torch

from podd_lib.errors import PoddError
from podd_lib.poddl import (
    FIXED_LABEL_FORMS,
    PosterLabels,
    class_map,
    clip_labels_,
    fixed_labels,
    label_grid_size,
    labels_from_counts,
    majority_labels,
)
from podd_lib.poster import make_geometry, tiling_geometry

ORDER = [[9, 0, 2, 4, 3], [1, 8, 6, 7, 5]]  # paper figure 8: truck airplane bird deer cat / automobile ship ...


def test_class_map_is_nearest_upsampling():
    cm = class_map([[0, 1], [2, 3]], 4, 6)
    assert cm.tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1], [2, 2, 2, 3, 3, 3], [2, 2, 2, 3, 3, 3]]


def test_majority_and_ties():
    counts = torch.tensor([[5.0, 3.0, 0.0], [4.0, 4.0, 1.0], [2.0, 2.0, 2.0]])
    lab = majority_labels(counts)
    assert torch.allclose(lab, torch.tensor([[1, 0, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3]]))


def test_fixed_labels_on_tiling_are_one_hot_of_the_class():
    g = tiling_geometry(10, (32, 32), (5, 2))
    lab = fixed_labels(ORDER, g)
    expected = torch.tensor([ORDER[j][i] for i in range(5) for j in range(2)])  # x-major
    assert torch.equal(lab.argmax(1), expected)
    assert torch.equal(lab.max(1).values, torch.ones(10))


def test_fixed_labels_of_overlapping_poster_are_distributions():
    g = make_geometry(0.9, 10, (32, 32), (5, 2), (16, 6))
    lab = fixed_labels(ORDER, g)
    assert lab.shape == (96, 10)
    assert torch.allclose(lab.sum(1), torch.ones(96))
    assert lab[0].argmax() == ORDER[0][0] and lab[-1].argmax() == ORDER[1][4]


def test_label_grid_sizes():
    g = make_geometry(0.9, 10, (32, 32), (5, 2), (16, 6), size=(60, 153))
    assert label_grid_size(g, "paper") == (2, 5)
    assert label_grid_size(g, "release") == (1, 6)  # method notes: the top row of classes gets no cell
    g100 = make_geometry(0.9, 100, (32, 32), (10, 10), (20, 20), size=(303, 303))
    assert label_grid_size(g100, "release") == (10, 9)


def test_learned_labels_start_as_the_class_grid_and_get_gradients():
    g = tiling_geometry(10, (32, 32), (5, 2))
    lab = PosterLabels(ORDER, g, learned=True)
    assert lab.Y.shape == (10, 2, 5)
    y = lab()
    assert torch.allclose(y, fixed_labels(ORDER, g))
    Y = lab.Y.clone().requires_grad_(True)
    idx = torch.tensor([0, 3])
    (gY,) = torch.autograd.grad(lab(Y, idx)[:, 1].sum(), Y)
    assert gY.abs().sum() > 0


def test_learned_labels_pool_a_window_and_l1_normalise():
    g = make_geometry(1.0, 10, (32, 32), (5, 2), (16, 6))
    lab = PosterLabels(ORDER, g, learned=True)
    Y = torch.rand(10, 2, 5)
    got = lab(Y)
    assert got.shape == (96, 10) and torch.allclose(got.sum(1), torch.ones(96))
    # window size max(1, floor(32 * 5 / 160)) = 1 cell: each label is one normalised column of Y
    k = 17  # i = 2, j = 5
    i, j = divmod(k, 6)
    ox = round(4 * i / 15)
    oy = round(1 * j / 5)
    want = Y[:, oy, ox] / Y[:, oy, ox].sum()
    assert torch.allclose(got[k], want)


def test_clip_labels_at_zero():
    Y = torch.tensor([[-1.0, 2.0]], requires_grad=True)
    clip_labels_(Y)
    assert Y.tolist() == [[0.0, 2.0]]


def test_fixed_label_forms_majority_softmax_and_proportions():
    counts = torch.tensor([[30.0, 10.0, 0.0], [20.0, 20.0, 0.0], [21.0, 20.0, 5.0]])
    assert torch.equal(labels_from_counts(counts, "majority"), torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [1.0, 0, 0]]))
    soft = labels_from_counts(counts, "softmax")
    assert torch.allclose(soft[1], torch.tensor([0.5, 0.5, 0.0]), atol=1e-6)
    assert 0.7 < soft[2, 0] < 0.75 and soft[2, 1] > 0.25  # a one-pixel lead is not a one-hot under the softmax
    prop = labels_from_counts(counts, "proportional")
    assert torch.allclose(prop[0], torch.tensor([0.75, 0.25, 0.0]))
    for form in FIXED_LABEL_FORMS:
        assert torch.allclose(labels_from_counts(counts, form).sum(1), torch.ones(3))
    with pytest.raises(PoddError):
        labels_from_counts(counts, "median")


def test_poster_labels_take_the_fixed_form():
    g = make_geometry(0.9, 10, (32, 32), (5, 2), (16, 6))
    prop = PosterLabels(ORDER, g, learned=False, fixed_form="proportional")()
    major = PosterLabels(ORDER, g, learned=False)()
    assert not torch.equal(prop, major) and torch.equal(prop.argmax(1), major.argmax(1))


def test_on_the_1ipc_cifar10_poster_the_release_softmax_is_the_text_majority():
    """Pixel counts differ by tens of pixels where classes meet, so their softmax is one-hot (or an even tie)."""
    g = make_geometry(1.0, 10, (32, 32), (5, 2), (16, 6))
    major, soft = fixed_labels(ORDER, g, "majority"), fixed_labels(ORDER, g, "softmax")
    assert torch.allclose(soft, major, atol=1e-6) and not torch.equal(fixed_labels(ORDER, g, "proportional"), major)
