"""The patch explorer's functions: windows, class areas, labels and figures agree with the library."""

from __future__ import annotations

import pytest
import torch

from podd_lib.kit import explore
from podd_lib.config import resolve_config
from podd_lib.run import geometry_from_config
from podd_lib.errors import PoddError
from podd_lib.poddl import PosterLabels, fixed_labels, majority_labels
from podd_lib.poster import extract_patches

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ORDER = [[9, 0, 2, 4, 3], [1, 8, 6, 7, 5]]


def fake_run(ipc: float, learned: bool, seed: int = 0) -> dict:
    """A run dict like explore.load's, with a random poster and (learned) a perturbed label tensor."""
    cfg = resolve_config("cifar10", ipc, "smoke")
    geom = geometry_from_config(cfg)
    g = torch.Generator().manual_seed(seed)
    labels = PosterLabels(ORDER, geom, learned=learned)
    Y = (labels.Y + 0.3 * torch.rand(labels.Y.shape, generator=g)) if learned else None
    return {"poster": torch.randn(3, geom.d_h, geom.d_w, generator=g), "geometry": geom, "order": ORDER,
            "classes": CLASSES, "preprocess": None, "y": labels(Y) if learned else labels(), "Y": Y}


@pytest.fixture(params=[(1.0, False), (0.5, True)], ids=["fixed-1.0", "learned-0.5"])
def run(request) -> dict:
    return fake_run(*request.param)


def test_patch_boxes_cut_the_same_patches_as_extract_patches(run):
    geom, poster = run["geometry"], run["poster"]
    boxes = explore.patch_boxes(geom)
    assert boxes.shape == (geom.n_patches, 4)
    patches = extract_patches(poster, geom)
    for k in (0, 1, geom.p_y, geom.n_patches // 2, geom.n_patches - 1):
        y, x, h, w = boxes[k].tolist()
        assert torch.equal(poster[:, y:y + h, x:x + w], patches[k])
    assert sorted(set(boxes[:, 1].tolist())) == geom.xs and sorted(set(boxes[:, 0].tolist())) == geom.ys


def test_class_area_fractions_sum_to_one_and_give_the_fixed_labels():
    run = fake_run(1.0, learned=False)
    geom = run["geometry"]
    areas = explore.class_area_fractions(ORDER, geom)
    assert areas.shape == (geom.n_patches, 10)
    torch.testing.assert_close(areas.sum(1), torch.ones(geom.n_patches))
    assert torch.equal(majority_labels(areas), fixed_labels(ORDER, geom))
    # The top-left patch lies wholly in the top-left class area (truck), the last in the bottom-right (dog).
    assert areas[0, 9] == 1 and areas[-1, 5] == 1


def test_class_area_fractions_count_pixels_by_hand():
    geom = fake_run(0.5, learned=True)["geometry"]
    rows = (torch.arange(geom.d_h) * geom.o_y) // geom.d_h
    cols = (torch.arange(geom.d_w) * geom.o_x) // geom.d_w
    cmap = torch.tensor(ORDER)[rows[:, None], cols[None, :]]
    k = geom.n_patches // 2 + 1
    y, x, h, w = explore.patch_boxes(geom)[k].tolist()
    counts = torch.bincount(cmap[y:y + h, x:x + w].flatten(), minlength=10).float() / (h * w)
    torch.testing.assert_close(explore.class_area_fractions(ORDER, geom)[k], counts)


def test_patch_info_reads_the_runs_labels(run):
    geom = run["geometry"]
    k = geom.n_patches - 2
    info = explore.patch_info(run, k)
    assert info["index"] == k and info["column"] * geom.p_y + info["row"] == k
    torch.testing.assert_close(info["label"], run["y"][k])
    assert info["top_class"] == CLASSES[int(run["y"][k].argmax())]
    if run["Y"] is None:
        assert info["y_window"] is None
    else:
        wy, wx, wh, ww = info["y_window"]
        s = run["Y"][:, wy:wy + wh, wx:wx + ww].sum((1, 2))
        torch.testing.assert_close(info["label"], s / s.sum())
    line = explore.describe(info, CLASSES)
    assert f"patch {k} " in line and info["top_class"] in line


@pytest.mark.parametrize("bad", [-1, 10_000, 1.5, "3", True])
def test_bad_patch_index_is_one_line_error(bad):
    run = fake_run(1.0, learned=False)
    with pytest.raises(PoddError, match=r"patch index must be an integer in 0\.\.95"):
        explore.patch_info(run, bad)


def test_patch_figure_has_the_label_tensor_panel_only_for_learned_labels(run):
    fig = explore.patch_figure(run, 5)
    titles = [ax.get_title() for ax in fig.axes]
    learned = run["Y"] is not None
    assert len(fig.axes) == (4 if learned else 3)
    assert any(t.startswith("patch 5 (column") for t in titles)
    assert any("learned label map Y" in t for t in titles) == learned
    bars = fig.axes[2].patches
    assert len(bars) == 2 * len(CLASSES)
    torch.testing.assert_close(torch.tensor([b.get_height() for b in bars[:10]], dtype=torch.float32), run["y"][5].float())
    png = explore.figure_png(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_gallery_figure_and_spread(run, tmp_path):
    geom = run["geometry"]
    ks = explore.spread_patches(geom, 6)
    assert ks[0] == 0 and ks[-1] == geom.n_patches - 1 and len(set(ks)) == 6
    fig = explore.gallery_figure(run, count=6)
    assert len(fig.axes) == 12
    assert [ax.get_title().split(" ")[1] for ax in fig.axes[:6]] == [str(k) for k in ks]
    path = tmp_path / "figures" / "gallery.png"
    explore.figure_png(fig, path)
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in path.parent.iterdir() if p.name != "gallery.png"]  # no temp file left
    with pytest.raises(PoddError, match="patch index"):
        explore.gallery_figure(run, patches=[0, geom.n_patches])


def test_explorer_widget_follows_the_slider_and_the_poster_choice():
    pytest.importorskip("ipywidgets")
    runs = {"1 IPC": fake_run(1.0, learned=False), "0.5 IPC": fake_run(0.5, learned=True)}
    box = explore.explorer(runs, start=3)
    (choose, slider), text = box.children[0].children, box.children[1]
    assert slider.max == runs["1 IPC"]["geometry"].n_patches - 1 and slider.value == 3
    assert text.value.startswith("patch 3 ")
    slider.value = 40
    assert text.value.startswith("patch 40 ")
    choose.value = "0.5 IPC"
    assert slider.max == runs["0.5 IPC"]["geometry"].n_patches - 1
    info = explore.patch_info(runs["0.5 IPC"], slider.value)
    assert text.value == explore.describe(info, CLASSES)
    with pytest.raises(PoddError, match="at least one run"):
        explore.explorer({})
