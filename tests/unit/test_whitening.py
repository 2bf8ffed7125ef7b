"""A run keeps its ZCA whitening by reference: recomputed from the dataset, checked, one line when it cannot be."""

from __future__ import annotations

import shutil

import pytest
import torch

from podd_lib import whitening
from podd_lib.config import resolve_config
from podd_lib.data import load_for_config
from podd_lib.errors import PoddError

from tests.helpers import make_imagefolder


@pytest.fixture()
def small(tmp_path):
    """A tiny ImageFolder read at 8x8 (a 192 x 192 whitening), its config and its ZCA."""
    folder = make_imagefolder(tmp_path / "toy")
    cfg = resolve_config(f"imagefolder:{folder}", 1.0, "smoke", {"n_classes": 4, "image_size": [8, 8]})
    return folder, cfg, load_for_config(cfg, tmp_path, download=False).preprocess


def test_a_reference_is_small_and_resolves_to_the_same_whitening(small, tmp_path):
    folder, cfg, zca = small
    ref = whitening.reference(zca)
    assert "eigvecs" not in ref
    state = whitening.resolve(ref, cfg, tmp_path / "poster.pt", tmp_path)
    torch.testing.assert_close(state["eigvecs"], zca.eigvecs)
    assert whitening.resolve(zca.state_dict(), cfg, tmp_path / "poster.pt") is not None  # older runs: as stored


def test_a_poster_without_its_dataset_says_what_it_needs(small, tmp_path):
    folder, cfg, zca = small
    ref = whitening.reference(zca)
    shutil.rmtree(folder)
    with pytest.raises(PoddError, match="poster.pt keeps a reference to the ZCA whitening"):
        whitening.resolve(ref, cfg, tmp_path / "poster.pt", tmp_path)


def test_a_changed_dataset_is_refused(small, tmp_path):
    folder, cfg, zca = small
    ref = whitening.reference(zca)
    ref["probe"] = ref["probe"] * 1.1
    with pytest.raises(PoddError, match="is not the one the run was made with"):
        whitening.resolve(ref, cfg, tmp_path / "poster.pt", tmp_path)
