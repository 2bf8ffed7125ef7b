"""PoCO (paper section 4.2): place the classes on the poster's class grid by CLIP text similarity.

The CLIP text embeddings themselves (weights, offline cache) come from `podd_lib.clip`.

A class grid `O` is a list of o_y rows, each a list of o_x class indices (row 0 = top of the
poster). PoCO embeds every class name with a CLIP text encoder, takes 1 - cosine similarity as
the distance, walks the grid along anti-diagonals from (0, 0), puts the dataset's first class in
the first cell, and gives each next cell the unplaced class closest (summed distance) to its
already-placed neighbours. Two embeddings are offered: "pooled" (`encode_text`, the usual CLIP
text embedding the paper describes) and "hidden" (the release: the ln_final hidden state of all
77 tokens, padded with end-of-text, flattened). Two walks are offered: "release" (every
anti-diagonal from bottom-left to top-right) and "zigzag" (JPEG-style alternation, paper fig. 4).
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any, Sequence

from .clip import clip_text_embeddings
from .errors import PoddError

Cell = tuple[int, int]
Order = list[list[int]]

FIXTURE_PATH = Path(__file__).resolve().parent / "fixtures" / "poco_orderings.json"
STYLES = ("release", "zigzag")
ORDER_SPECS = "poco|poco-zigzag|paper|identity|random:SEED|file:PATH"


# ---------------------------------------------------------------------------- small helpers

def _norm_name(name: str) -> str:
    """Class-name key for matching: lower case, spaces and hyphens as underscores."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _check_dims(o_y: int, o_x: int) -> None:
    """Raise unless o_y and o_x are positive integers."""
    for name, value in (("o_y", o_y), ("o_x", o_x)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PoddError(f"class grid size {name} must be a positive integer, got {value!r}")


def _check_grid(n_classes: int, o_y: int, o_x: int) -> None:
    """Raise unless the o_y x o_x class grid holds exactly n_classes cells."""
    _check_dims(o_y, o_x)
    if o_y * o_x != n_classes:
        raise PoddError(
            f"class grid {o_y}x{o_x} (rows x columns) holds {o_y * o_x} cells "
            f"but the dataset has {n_classes} classes")


def _reshape(flat: Sequence[int], o_y: int, o_x: int) -> Order:
    """Row-major reshape of a flat list into o_y rows of o_x."""
    return [list(flat[r * o_x:(r + 1) * o_x]) for r in range(o_y)]


def validate_order(order: Any, n_classes: int, o_y: int, o_x: int) -> Order:
    """Return order as list[list[int]] after checking its shape and that it uses every class once."""
    _check_grid(n_classes, o_y, o_x)
    if not isinstance(order, (list, tuple)) or len(order) != o_y or any(
            not isinstance(row, (list, tuple)) or len(row) != o_x for row in order):
        raise PoddError(f"class order must be {o_y} rows of {o_x} class indices")
    flat = [v for row in order for v in row]
    if any(isinstance(v, bool) or not isinstance(v, int) for v in flat):
        raise PoddError("class order entries must be integer class indices")
    if sorted(flat) != list(range(n_classes)):
        missing = sorted(set(range(n_classes)) - set(flat))
        raise PoddError(
            f"class order must use each of the {n_classes} classes exactly once "
            f"(missing: {missing[:5]}{'...' if len(missing) > 5 else ''})")
    return [list(row) for row in order]


def _as_matrix(dist: Any) -> list[list[float]]:
    """A square distance matrix (tensor, array or nested list) as a list of float rows."""
    import torch
    d = torch.as_tensor(dist, dtype=torch.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1] or d.shape[0] == 0:
        raise PoddError(f"distance matrix must be square and non-empty, got shape {tuple(d.shape)}")
    if not torch.isfinite(d).all():
        raise PoddError("distance matrix contains NaN or infinite values")
    return d.tolist()


# ---------------------------------------------------------------------------- distances, grid walks, PoCO

def cosine_distances(emb: Any) -> Any:
    """Pairwise 1 - cosine similarity (n, n) of the rows of emb, float64, zero diagonal."""
    import torch
    x = torch.as_tensor(emb, dtype=torch.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise PoddError(f"embeddings must be a non-empty (n, D) matrix, got shape {tuple(x.shape)}")
    norms = x.norm(dim=1)
    if not torch.isfinite(x).all() or (norms == 0).any():
        raise PoddError("embeddings must be finite and non-zero to compute cosine distances")
    unit = x / norms[:, None]
    d = 1.0 - unit @ unit.T
    d = (d + d.T) / 2
    d.fill_diagonal_(0.0)
    return d.clamp_(min=0.0)

def antidiagonal_order(o_y: int, o_x: int, style: str = "release") -> list[Cell]:
    """Cells (row, col) of an o_y x o_x grid along anti-diagonals from (0, 0).

    release: every anti-diagonal from bottom-left to top-right; zigzag: JPEG order, odd
    anti-diagonals from top-right to bottom-left, even ones from bottom-left to top-right.
    """
    if style not in STYLES:
        raise PoddError(f"unknown traversal style {style!r}; use one of {', '.join(STYLES)}")
    _check_dims(o_y, o_x)
    cells: list[Cell] = []
    for d in range(o_y + o_x - 1):
        diagonal = [(r, d - r) for r in range(min(d, o_y - 1), max(0, d - o_x + 1) - 1, -1)]
        if style == "zigzag" and d % 2 == 1:
            diagonal.reverse()
        cells.extend(diagonal)
    return cells


def _placed_neighbours(grid: Order, r: int, c: int) -> list[int]:
    """Classes already placed in the 4-neighbourhood of cell (r, c); -1 marks an empty cell."""
    found = []
    for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
        if 0 <= rr < len(grid) and 0 <= cc < len(grid[0]) and grid[rr][cc] >= 0:
            found.append(grid[rr][cc])
    return found


def _closest_class(dist: list[list[float]], neighbours: list[int], remaining: set[int]) -> int:
    """The remaining class with the smallest summed distance to the neighbours (ties: lowest index)."""
    return min(sorted(remaining), key=lambda c: sum(dist[m][c] for m in neighbours))


def poco_order(dist: Any, o_y: int, o_x: int, first: int = 0, style: str = "release") -> Order:
    """PoCO greedy placement: the class grid (o_y rows of o_x class indices) for a distance matrix."""
    d = _as_matrix(dist)
    n = len(d)
    _check_grid(n, o_y, o_x)
    if isinstance(first, bool) or not isinstance(first, int) or not 0 <= first < n:
        raise PoddError(f"first class must be an index in [0, {n}), got {first!r}")
    cells = antidiagonal_order(o_y, o_x, style)
    grid = [[-1] * o_x for _ in range(o_y)]
    remaining = set(range(n)) - {first}
    grid[cells[0][0]][cells[0][1]] = first
    for r, c in cells[1:]:
        pick = _closest_class(d, _placed_neighbours(grid, r, c), remaining)
        grid[r][c] = pick
        remaining.discard(pick)
    return grid


def neighbour_pairs(order: Order) -> list[tuple[int, int]]:
    """All horizontally and vertically adjacent class pairs of a class grid."""
    pairs = []
    for r, row in enumerate(order):
        for c, cls in enumerate(row):
            if c + 1 < len(row):
                pairs.append((cls, row[c + 1]))
            if r + 1 < len(order):
                pairs.append((cls, order[r + 1][c]))
    return pairs


def ordering_score(order: Order, dist: Any) -> float:
    """Paper 5.3: 1 / (sum of distances over all neighbouring class pairs); inf when that sum is 0."""
    d = _as_matrix(dist)
    o_y = len(order) if isinstance(order, (list, tuple)) else 0
    o_x = len(order[0]) if o_y and isinstance(order[0], (list, tuple)) else 0
    if o_y * o_x != len(d):
        raise PoddError(f"class order has {o_y}x{o_x} cells but the distance matrix has {len(d)} classes")
    order = validate_order(order, len(d), o_y, o_x)
    pairs = neighbour_pairs(order)
    if not pairs:
        raise PoddError("a 1x1 class grid has no neighbouring pairs to score")
    total = sum(d[a][b] for a, b in pairs)
    return float("inf") if total == 0 else 1.0 / total


# ---------------------------------------------------------------------------- other orderings

def identity_order(n: int, o_y: int, o_x: int) -> Order:
    """Classes 0..n-1 in row-major order."""
    _check_grid(n, o_y, o_x)
    return _reshape(list(range(n)), o_y, o_x)


def random_order(n: int, o_y: int, o_x: int, seed: int) -> Order:
    """A seeded random permutation of the classes, row-major (Python's random.Random(seed))."""
    _check_grid(n, o_y, o_x)
    perm = list(range(n))
    random.Random(seed).shuffle(perm)
    return _reshape(perm, o_y, o_x)


def _names_to_indices(rows: Any, classes: Sequence[str], source: str) -> list[list[Any]]:
    """Map a grid of class names to class indices (matching ignores case, spaces vs underscores)."""
    index = {_norm_name(c): i for i, c in enumerate(classes)}
    out = []
    for row in rows:
        mapped = []
        for name in row:
            if _norm_name(name) not in index:
                raise PoddError(f"{source}: class {name!r} is not one of the dataset's classes")
            mapped.append(index[_norm_name(name)])
        out.append(mapped)
    return out


def load_fixtures() -> dict:
    """The published orderings fixture (podd_lib/fixtures/poco_orderings.json)."""
    with open(FIXTURE_PATH, encoding="utf-8") as f:
        return json.load(f)


def _dataset_key(dataset: str) -> str:
    """Fixture key of a dataset name: lower case letters and digits only (CIFAR-10 -> cifar10)."""
    return re.sub(r"[^a-z0-9]", "", str(dataset).lower())


def paper_order(dataset: str, classes: Sequence[str], o_y: int, o_x: int) -> Order:
    """The ordering published in the paper for this dataset (CIFAR-10 fig. 8, CIFAR-100 fig. 7)."""
    fixtures = {k: v for k, v in load_fixtures().items() if isinstance(v, dict)}
    entry = fixtures.get(_dataset_key(dataset))
    if entry is None:
        raise PoddError(f"the paper publishes no class ordering for dataset {dataset!r} "
                        f"(available: {', '.join(sorted(fixtures))})")
    names = entry["order"]
    if (len(names), len(names[0])) != (o_y, o_x):
        raise PoddError(f"the paper's {dataset} ordering is a {len(names)}x{len(names[0])} grid "
                        f"(rows x columns), not {o_y}x{o_x}")
    return validate_order(_names_to_indices(names, classes, f"paper ordering for {dataset}"),
                          len(classes), o_y, o_x)


def read_order_file(path: str | os.PathLike) -> list[list[Any]]:
    """The rows of a class order file (a JSON list of rows); a missing, unreadable or malformed file is one line."""
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
    except OSError as exc:
        raise PoddError(f"cannot read class order file {str(path)!r}: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        why = f"{exc.msg} (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise PoddError(f"class order file {str(path)!r} is not valid JSON: {why}") from exc
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise PoddError(f"class order file {str(path)!r} must hold a JSON list of rows")
    return rows


def _all_names(rows: list[list[Any]]) -> bool:
    """Whether an order file names its classes (else it holds class indices)."""
    flat = [v for r in rows for v in r]
    return bool(flat) and all(isinstance(v, str) for v in flat)


def file_order(path: str | os.PathLike, classes: Sequence[str], o_y: int, o_x: int) -> Order:
    """An ordering read from a JSON file: a list of rows of class names or of class indices."""
    rows = read_order_file(path)
    if _all_names(rows):
        _check_name_grid(rows, path, len(classes), o_y, o_x)
        rows = _names_to_indices(rows, classes, f"class order file {str(path)!r}")
    return validate_order(rows, len(classes), o_y, o_x)


def _check_name_grid(rows: list[list[str]], path: str | os.PathLike, n_classes: int, o_y: int, o_x: int) -> None:
    """A grid of class names: o_y rows of o_x names, none named twice."""
    _check_grid(n_classes, o_y, o_x)
    if len(rows) != o_y or any(len(r) != o_x for r in rows):
        raise PoddError(f"class order file {str(path)!r} must be {o_y} rows of {o_x} class names")
    names = [_norm_name(v) for r in rows for v in r]
    twice = sorted({v for v in names if names.count(v) > 1})
    if twice:
        raise PoddError(f"class order file {str(path)!r} names {twice[0]!r} more than once")


def check_order_file(path: str | os.PathLike, n_classes: int, o_y: int, o_x: int,
                     classes: Sequence[str] | None = None) -> None:
    """Check a class order file before any data is read: fully when the class names are known, else its grid.

    Without the names (datasets whose names come with their data) a file of names is checked for
    its shape and repeats; the names themselves are matched once the data is read.
    """
    if classes is not None:
        file_order(path, classes, o_y, o_x)
        return
    rows = read_order_file(path)
    if _all_names(rows):
        _check_name_grid(rows, path, n_classes, o_y, o_x)
    else:
        validate_order(rows, n_classes, o_y, o_x)


def _parse_seed(text: str) -> int:
    """The integer seed of a random:SEED spec."""
    try:
        return int(text)
    except ValueError:
        raise PoddError(f"random class order needs an integer seed (random:SEED), got {text!r}") from None


def resolve_order(spec: str, classes: Sequence[str], o_y: int, o_x: int, dataset: str = "",
                  **clip_kwargs: Any) -> Order:
    """The class grid for an --order spec: poco, poco-zigzag, paper, identity, random:SEED, file:PATH."""
    classes = list(classes)
    _check_grid(len(classes), o_y, o_x)
    spec = str(spec).strip()
    if spec in ("poco", "poco-zigzag"):
        dist = cosine_distances(clip_text_embeddings(classes, **clip_kwargs))
        return poco_order(dist, o_y, o_x, first=0, style="zigzag" if spec == "poco-zigzag" else "release")
    if spec == "paper":
        return paper_order(dataset, classes, o_y, o_x)
    if spec == "identity":
        return identity_order(len(classes), o_y, o_x)
    if spec.startswith("random:"):
        return random_order(len(classes), o_y, o_x, _parse_seed(spec[len("random:"):]))
    if spec.startswith("file:") and spec[len("file:"):]:
        return file_order(spec[len("file:"):], classes, o_y, o_x)
    raise PoddError(f"unknown class order {spec!r}; use one of {ORDER_SPECS}")


def class_mean_distances(real: Any) -> Any:
    """Cosine distances (n, n) between the class means of real.x_train (in its preprocessed, e.g. ZCA, space).

    A stand-in for the CLIP text distances of PoCO when CLIP weights are not available: it measures
    how alike the classes look in the training images, not how alike their names are.
    """
    import torch

    x = torch.as_tensor(real.x_train).double().flatten(1)
    y = torch.as_tensor(real.y_train).long()
    n = len(real.classes) if hasattr(real, "classes") else int(y.max()) + 1
    sums = torch.zeros(n, x.shape[1], dtype=torch.float64).index_add_(0, y, x)
    counts = torch.bincount(y, minlength=n).double()
    if (counts == 0).any():
        raise PoddError(f"class {int(torch.nonzero(counts == 0)[0])} has no training images")
    return cosine_distances(sums / counts[:, None])
