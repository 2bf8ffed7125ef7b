"""Tests for podd_lib.poco: grid walks, greedy placement, scores, fixtures, order specs, CLIP path."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from podd_lib import clip, poco
from podd_lib.errors import PoddError

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def line_distances(n: int) -> torch.Tensor:
    """|i - j|: classes sitting on a line at their own index."""
    x = torch.arange(n, dtype=torch.float64)
    return (x[:, None] - x[None, :]).abs()


# ---------------------------------------------------------------------------- traversal orders

def test_release_walk_2x5_exact():
    assert poco.antidiagonal_order(2, 5, "release") == [
        (0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2), (0, 3), (1, 3), (0, 4), (1, 4)]


def test_zigzag_walk_2x5_and_3x3_exact():
    assert poco.antidiagonal_order(2, 5, "zigzag") == [
        (0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3), (0, 4), (1, 4)]
    # JPEG zigzag on 3x3
    assert poco.antidiagonal_order(3, 3, "zigzag") == [
        (0, 0), (0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (1, 2), (2, 1), (2, 2)]


def test_release_walk_3x3_goes_bottom_left_to_top_right():
    assert poco.antidiagonal_order(3, 3) == [
        (0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2), (2, 1), (1, 2), (2, 2)]


@pytest.mark.parametrize("style", poco.STYLES)
@pytest.mark.parametrize("o_y,o_x", [(1, 1), (1, 7), (7, 1), (2, 5), (5, 2), (4, 6), (10, 10)])
def test_walks_visit_every_cell_once_along_antidiagonals(style, o_y, o_x):
    cells = poco.antidiagonal_order(o_y, o_x, style)
    assert sorted(cells) == [(r, c) for r in range(o_y) for c in range(o_x)]
    sums = [r + c for r, c in cells]
    assert sums == sorted(sums) and cells[0] == (0, 0)


def test_walk_rejects_bad_style_and_size():
    with pytest.raises(PoddError, match="traversal style"):
        poco.antidiagonal_order(2, 5, "spiral")
    with pytest.raises(PoddError, match="o_x"):
        poco.antidiagonal_order(2, 0)


# ---------------------------------------------------------------------------- greedy placement

def test_poco_on_a_line_fills_in_line_order():
    assert poco.poco_order(line_distances(6), 1, 6) == [[0, 1, 2, 3, 4, 5]]
    assert poco.poco_order(line_distances(6), 6, 1) == [[0], [1], [2], [3], [4], [5]]


def test_poco_on_a_line_2x3_by_hand():
    d = line_distances(6)
    # release: (0,0)=0, (1,0)=1, (0,1)=2, (1,1): |c-2|+|c-1| -> 3, (0,2): |c-2| -> 4, (1,2)=5
    assert poco.poco_order(d, 2, 3, style="release") == [[0, 2, 4], [1, 3, 5]]
    # zigzag: (0,0)=0, (0,1)=1, (1,0)=2, (1,1): |c-1|+|c-2| -> 3, (0,2): |c-1| -> 4, (1,2)=5
    assert poco.poco_order(d, 2, 3, style="zigzag") == [[0, 1, 4], [2, 3, 5]]


def test_poco_first_class_and_ties_go_to_lowest_index():
    flat = torch.ones(6, 6) - torch.eye(6)
    assert poco.poco_order(flat, 2, 3, first=3) == [[3, 1, 4], [0, 2, 5]]


def test_poco_places_shuffled_line_points_by_position():
    pos = torch.tensor([5.0, 0.0, 3.0, 1.0, 4.0, 2.0])  # class i sits at pos[i]
    d = (pos[:, None] - pos[None, :]).abs()
    assert poco.poco_order(d, 1, 6, first=1) == [[1, 3, 5, 2, 4, 0]]


def test_poco_rejects_class_count_mismatch():
    with pytest.raises(PoddError, match=r"^class grid 5x3 \(rows x columns\) holds 15 cells "
                                        r"but the dataset has 10 classes$"):
        poco.poco_order(line_distances(10), 5, 3)
    with pytest.raises(PoddError, match="square"):
        poco.poco_order(torch.zeros(2, 3), 1, 2)
    with pytest.raises(PoddError, match="first class"):
        poco.poco_order(line_distances(4), 2, 2, first=4)


def test_cosine_distances_basic_properties():
    emb = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0]])
    d = poco.cosine_distances(emb)
    assert d.shape == (4, 4) and d.dtype == torch.float64
    assert torch.allclose(d, d.T) and torch.all(d.diagonal() == 0)
    assert d[0, 1].item() == pytest.approx(1.0)
    assert d[0, 2].item() == pytest.approx(2.0)
    assert d[0, 3].item() == pytest.approx(1 - 2 ** -0.5)
    with pytest.raises(PoddError, match="non-zero"):
        poco.cosine_distances(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))


# ---------------------------------------------------------------------------- ordering score

def test_ordering_score_2x2_by_hand():
    d = torch.tensor([[0.0, 0.1, 0.2, 0.9],
                      [0.1, 0.0, 0.9, 0.3],
                      [0.2, 0.9, 0.0, 0.4],
                      [0.9, 0.3, 0.4, 0.0]])
    # pairs of [[0,1],[2,3]]: (0,1) .1 + (0,2) .2 + (1,3) .3 + (2,3) .4 = 1.0
    assert poco.ordering_score([[0, 1], [2, 3]], d) == pytest.approx(1.0)
    # pairs of [[0,3],[1,2]]: (0,3) .9 + (0,1) .1 + (3,2) .4 + (1,2) .9 = 2.3
    assert poco.ordering_score([[0, 3], [1, 2]], d) == pytest.approx(1 / 2.3)


def test_ordering_score_prefers_poco_on_a_line():
    d = line_distances(10)
    placed = poco.poco_order(d, 2, 5)
    assert poco.ordering_score(placed, d) > poco.ordering_score(poco.random_order(10, 2, 5, 1), d)


def test_ordering_score_rejects_bad_orders():
    with pytest.raises(PoddError, match="exactly once"):
        poco.ordering_score([[0, 0], [2, 3]], line_distances(4))
    with pytest.raises(PoddError, match="distance matrix has 4 classes"):
        poco.ordering_score([[0, 1, 2]], line_distances(4))
    with pytest.raises(PoddError, match="no neighbouring pairs"):
        poco.ordering_score([[0]], line_distances(1))


# ---------------------------------------------------------------------------- fixtures

def test_fixture_cifar10_is_figure_8_and_a_permutation():
    fx = poco.load_fixtures()["cifar10"]
    assert fx["classes"] == CIFAR10
    assert fx["order"] == [["truck", "airplane", "bird", "deer", "cat"],
                           ["automobile", "ship", "frog", "horse", "dog"]]
    assert sorted(n for row in fx["order"] for n in row) == sorted(CIFAR10)


def test_fixture_cifar100_is_a_permutation_of_the_fine_labels():
    fx = poco.load_fixtures()["cifar100"]
    classes = fx["classes"]
    assert len(classes) == 100 == len(set(classes)) and classes == sorted(classes)
    assert {"aquarium_fish", "sweet_pepper", "cup", "plain", "lawn_mower", "willow_tree"} <= set(classes)
    assert len(fx["order"]) == 10 and all(len(row) == 10 for row in fx["order"])
    assert sorted(n for row in fx["order"] for n in row) == classes
    assert fx["order"][0][0] == classes[0] == "apple"  # PoCO puts the first class top-left


def test_fixture_cifar100_names_follow_the_figure():
    fx = poco.load_fixtures()["cifar100"]
    renamed = fx["renamed"]
    for shown_row, row in zip(fx["display_names"], fx["order"]):
        for shown, name in zip(shown_row, row):
            assert renamed.get(shown, shown.lower().replace(" ", "_")) == name


def test_paper_order_maps_names_to_indices():
    assert poco.paper_order("CIFAR-10", CIFAR10, 2, 5) == [[9, 0, 2, 4, 3], [1, 8, 6, 7, 5]]
    c100 = poco.load_fixtures()["cifar100"]["classes"]
    order = poco.paper_order("cifar100", c100, 10, 10)
    assert sorted(v for row in order for v in row) == list(range(100))
    assert c100[order[5][7]] == "palm_tree"


def test_paper_order_errors():
    with pytest.raises(PoddError, match="no class ordering for dataset 'cub200'"):
        poco.paper_order("cub200", [str(i) for i in range(200)], 10, 20)
    with pytest.raises(PoddError, match="2x5 grid"):
        poco.paper_order("cifar10", CIFAR10, 5, 2)
    with pytest.raises(PoddError, match="'truck' is not one of the dataset's classes"):
        poco.paper_order("cifar10", CIFAR10[:9] + ["lorry"], 2, 5)


# ---------------------------------------------------------------------------- other orders, specs

def test_identity_and_random_orders():
    assert poco.identity_order(6, 2, 3) == [[0, 1, 2], [3, 4, 5]]
    a = poco.random_order(10, 2, 5, seed=3)
    assert a == poco.random_order(10, 2, 5, seed=3)
    assert a != poco.random_order(10, 2, 5, seed=4)
    assert sorted(v for row in a for v in row) == list(range(10))


def test_file_order_names_and_indices(tmp_path):
    by_name = tmp_path / "names.json"
    by_name.write_text(json.dumps([["truck", "airplane", "bird", "deer", "cat"],
                                   ["Automobile", "ship", "frog", "horse", "dog"]]))
    assert poco.file_order(by_name, CIFAR10, 2, 5) == [[9, 0, 2, 4, 3], [1, 8, 6, 7, 5]]
    by_index = tmp_path / "idx.json"
    by_index.write_text(json.dumps([[1, 0], [3, 2]]))
    assert poco.file_order(by_index, ["a", "b", "c", "d"], 2, 2) == [[1, 0], [3, 2]]


def test_file_order_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[[0, 1], [2,")
    with pytest.raises(PoddError, match="not valid JSON"):
        poco.file_order(bad, list("abcd"), 2, 2)
    with pytest.raises(PoddError, match="cannot read class order file"):
        poco.file_order(tmp_path / "missing.json", list("abcd"), 2, 2)
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps([[0, 1], [1, 2]]))
    with pytest.raises(PoddError, match="exactly once"):
        poco.file_order(dup, list("abcd"), 2, 2)
    shape = tmp_path / "shape.json"
    shape.write_text(json.dumps([[0, 1, 2, 3]]))
    with pytest.raises(PoddError, match="2 rows of 2"):
        poco.file_order(shape, list("abcd"), 2, 2)


def test_resolve_order_simple_specs(tmp_path):
    assert poco.resolve_order("identity", CIFAR10, 2, 5, "cifar10") == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert poco.resolve_order("random:7", CIFAR10, 2, 5, "cifar10") == poco.random_order(10, 2, 5, 7)
    assert poco.resolve_order("paper", CIFAR10, 2, 5, "cifar10") == [[9, 0, 2, 4, 3], [1, 8, 6, 7, 5]]
    f = tmp_path / "o.json"
    f.write_text(json.dumps([list(range(5, 10)), list(range(5))]))
    assert poco.resolve_order(f"file:{f}", CIFAR10, 2, 5) == [[5, 6, 7, 8, 9], [0, 1, 2, 3, 4]]


def test_resolve_order_poco_specs_use_clip_distances(monkeypatch):
    pos = torch.tensor([0.0, 2.0, 4.0, 1.0, 3.0, 5.0])  # 2-D points on the unit circle, by angle
    emb = torch.stack([torch.cos(pos / 4), torch.sin(pos / 4)], dim=1)
    seen = {}

    def fake_embeddings(classes, **kwargs):
        seen.update(kwargs)
        return emb

    monkeypatch.setattr(poco, "clip_text_embeddings", fake_embeddings)
    classes = list("abcdef")
    # by angle: a(0) d(1) b(2) e(3) c(4) f(5); the line answers [[0,2,4],[1,3,5]] (release)
    # and [[0,1,4],[2,3,5]] (zigzag) in angle ranks, relabelled to class indices
    assert poco.resolve_order("poco", classes, 2, 3, variant="hidden") == [[0, 1, 2], [3, 4, 5]]
    assert seen == {"variant": "hidden"}
    assert poco.resolve_order("poco-zigzag", classes, 2, 3) == [[0, 3, 2], [1, 4, 5]]


def test_resolve_order_errors():
    with pytest.raises(PoddError, match=r"unknown class order 'spiral'; use one of "
                                        r"poco\|poco-zigzag\|paper\|identity\|random:SEED\|file:PATH"):
        poco.resolve_order("spiral", CIFAR10, 2, 5)
    with pytest.raises(PoddError, match="unknown class order 'random'"):
        poco.resolve_order("random", CIFAR10, 2, 5)
    with pytest.raises(PoddError, match="integer seed"):
        poco.resolve_order("random:x", CIFAR10, 2, 5)
    with pytest.raises(PoddError, match="holds 15 cells but the dataset has 10 classes"):
        poco.resolve_order("poco", CIFAR10, 5, 3)


# ---------------------------------------------------------------------------- CLIP code path

@pytest.fixture(scope="module")
def random_clip():
    """A randomly initialised ViT-B-32 (init_seed 0), created once for this module."""
    return clip.load_clip("ViT-B-32", pretrained=None, init_seed=0)


def test_weights_unavailable_fails_fast_with_one_line(tmp_path, monkeypatch):
    import open_clip  # noqa: F401  (import time is not what is measured)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(PoddError) as info:
        clip.clip_text_embeddings(CIFAR10, pretrained="openai", cache_dir=tmp_path / "emb",
                                  weights_dir=str(tmp_path / "weights"))
    assert time.monotonic() - start < 15
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("CLIP weights could not be loaded")
    assert "--order paper|identity|random:SEED|file:PATH" in msg
    assert not list((tmp_path).rglob("*.pt"))


def test_weights_unavailable_when_hub_unreachable(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("PODD_OFFLINE", raising=False)
    monkeypatch.setattr(clip, "_hub_reachable", lambda host, timeout=3.0: False)
    with pytest.raises(PoddError, match=r"^CLIP weights could not be loaded .*cannot be reached; "
                                        r"use --order paper\|identity\|random:SEED\|file:PATH instead$"):
        clip.load_clip("ViT-B-32", "openai", weights_dir=str(tmp_path))
    with pytest.raises(PoddError, match="not a known open_clip tag"):
        clip.load_clip("ViT-B-32", "no-such-tag", weights_dir=str(tmp_path))


@pytest.fixture
def reuse_random_clip(monkeypatch, random_clip):
    """Make load_clip hand back the module's random model (no re-creation); records its calls."""
    calls = []

    def fake_load(model_name="ViT-B-32", pretrained="openai", device="cpu", weights_dir=None, init_seed=0):
        calls.append((model_name, pretrained, init_seed))
        return random_clip

    monkeypatch.setattr(clip, "load_clip", fake_load)
    return calls


def test_random_init_is_seeded_and_independent_of_global_rng(random_clip):
    torch.manual_seed(1234)
    again = clip.load_clip("ViT-B-32", pretrained=None, init_seed=0)
    for a, b in zip(random_clip.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_clip_embeddings_shapes_and_disk_cache(tmp_path, random_clip, reuse_random_clip):
    cache = tmp_path / "cache"
    pooled = clip.clip_text_embeddings(CIFAR10, "pooled", pretrained=None, cache_dir=cache)
    hidden = clip.clip_text_embeddings(CIFAR10, "hidden", pretrained=None, cache_dir=cache)
    assert reuse_random_clip == [("ViT-B-32", None, 0)] * 2
    assert pooled.shape == (10, 512) and hidden.shape == (10, 77 * 512)
    assert pooled.dtype == hidden.dtype == torch.float32
    # the hidden state at each name's end-of-text token, projected, is the pooled embedding
    tokens = clip.tokenize_classes(CIFAR10)
    at_eot = hidden.view(10, 77, 512)[torch.arange(10), tokens.argmax(dim=-1)]
    with torch.no_grad():
        assert torch.allclose(at_eot @ random_clip.text_projection, pooled, atol=1e-5)
    assert len(list(cache.glob("*.pt"))) == 2
    # second calls read the disk: load_clip is not called again
    assert torch.equal(clip.clip_text_embeddings(CIFAR10, "pooled", pretrained=None, cache_dir=cache), pooled)
    assert torch.equal(clip.clip_text_embeddings(CIFAR10, "hidden", pretrained=None, cache_dir=cache), hidden)
    assert len(reuse_random_clip) == 2
    # other classes or another init seed are other cache keys
    for key in (clip.embedding_cache_path(CIFAR10[::-1], "pooled", "ViT-B-32", None, cache),
                clip.embedding_cache_path(CIFAR10, "pooled", "ViT-B-32", None, cache, init_seed=1),
                clip.embedding_cache_path(CIFAR10, "pooled", "ViT-B-32", "openai", cache)):
        assert not key.exists()


def test_resolve_order_poco_with_random_clip(tmp_path, reuse_random_clip):
    order = poco.resolve_order("poco", CIFAR10, 2, 5, "cifar10", pretrained=None, cache_dir=tmp_path)
    assert order[0][0] == 0 and sorted(v for row in order for v in row) == list(range(10))
    assert reuse_random_clip == [("ViT-B-32", None, 0)]


def test_hidden_states_reproduce_encode_text(random_clip):
    tokens = clip.tokenize_classes(["aquarium_fish", "pickup truck", "cat"])
    hidden = clip.final_hidden_states(random_clip, tokens)
    pooled = hidden[torch.arange(3), tokens.argmax(dim=-1)] @ random_clip.text_projection
    with torch.no_grad():
        assert torch.allclose(pooled, random_clip.encode_text(tokens), atol=1e-5)


def test_tokens_use_spaces_and_eot_padding():
    plain = clip.tokenize_classes(["aquarium_fish"])
    assert torch.equal(plain, clip.tokenize_classes(["aquarium fish"]))
    padded = clip.tokenize_classes(["aquarium_fish"], pad_with_eot=True)
    eot = int(plain.max())
    n = int((plain != 0).sum())
    assert torch.equal(padded[0, :n], plain[0, :n]) and torch.all(padded[0, n:] == eot)


def test_cached_openai_weights_load_offline_with_quickgelu(tmp_path, monkeypatch, random_clip):
    # fake Hugging Face cache holding the 'openai' ViT-B-32 file (random weights here)
    repo = tmp_path / "hub" / "models--timm--vit_base_patch32_clip_224.openai"
    snap = repo / "snapshots" / "0"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0")
    snap.mkdir(parents=True)
    torch.save(random_clip.state_dict(), snap / "open_clip_pytorch_model.bin")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = clip.load_clip("ViT-B-32", "openai", weights_dir=str(tmp_path / "hub"))
    act = model.transformer.resblocks[0].mlp.gelu
    assert type(act).__name__ == "QuickGELU"
    assert torch.equal(model.token_embedding.weight, random_clip.token_embedding.weight)


def test_class_mean_distances():
    class Real:
        x_train = torch.tensor([[[1.0, 0.0]], [[3.0, 0.0]], [[0.0, 2.0]], [[0.0, 1.0]], [[1.0, 1.0]]])
        y_train = torch.tensor([0, 0, 1, 1, 2])
        classes = ["a", "b", "c"]

    d = poco.class_mean_distances(Real())
    assert d.shape == (3, 3) and torch.allclose(d, d.T) and torch.all(d.diagonal() == 0)
    assert d[0, 1] == pytest.approx(1.0)  # orthogonal means
    assert d[0, 2] == pytest.approx(1 - 1 / math.sqrt(2))
