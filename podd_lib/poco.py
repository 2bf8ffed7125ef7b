"""PoCO (paper section 4.2): place the classes on the poster's class grid by CLIP text similarity.

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

import hashlib
import json
import os
import random
import re
import socket
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

from .errors import PoddError
from .io import atomic_torch_save

Cell = tuple[int, int]
Order = list[list[int]]

FIXTURE_PATH = Path(__file__).resolve().parent / "fixtures" / "poco_orderings.json"
VARIANTS = ("pooled", "hidden")
STYLES = ("release", "zigzag")
ORDER_SPECS = "poco|poco-zigzag|paper|identity|random:SEED|file:PATH"
_FALLBACK_HINT = "use --order paper|identity|random:SEED|file:PATH instead"
_CACHE_FORMAT = 1
_HF_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


# ---------------------------------------------------------------------------- small helpers

def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, shortened, for one-line errors."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def _truthy_env(name: str) -> bool:
    """Whether an environment variable is set to a true value (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _slug(text: str, limit: int = 48) -> str:
    """A file-name-safe short form of text."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:limit] or "x"


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


# ---------------------------------------------------------------------------- CLIP embeddings

def default_cache_dir() -> Path:
    """Embedding cache folder: $PODD_CACHE_DIR/clip_text, else ~/.cache/podd-kit/clip_text."""
    root = os.environ.get("PODD_CACHE_DIR") or Path.home() / ".cache" / "podd-kit"
    return Path(root) / "clip_text"


def _weights_label(pretrained: str | None, init_seed: int) -> str:
    """The weights part of the cache key: the pretrained tag or path, or the random-init seed."""
    return f"random-init-seed{init_seed}" if pretrained is None else str(pretrained)


def embedding_cache_path(classes: Sequence[str], variant: str, model_name: str,
                         pretrained: str | None, cache_dir: str | os.PathLike | None = None,
                         init_seed: int = 0) -> Path:
    """Cache file for these embeddings, keyed by model, weights, variant and the class-list hash."""
    weights = _weights_label(pretrained, init_seed)
    class_hash = hashlib.sha256("\n".join(classes).encode()).hexdigest()[:16]
    key = json.dumps([_CACHE_FORMAT, model_name, weights, variant, class_hash])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    name = f"{_slug(model_name)}_{_slug(Path(weights).name)}_{variant}_{class_hash}_{digest}.pt"
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / name


def _read_cache(path: Path, classes: Sequence[str]) -> Any:
    """The cached embedding tensor at path, or None when absent, unreadable or for other classes."""
    import torch
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    if not isinstance(blob, dict) or blob.get("classes") != list(classes):
        return None
    emb = blob.get("embeddings")
    return emb if isinstance(emb, torch.Tensor) and emb.shape[0] == len(classes) else None


def _hub_reachable(host: str, timeout: float = 3.0) -> bool:
    """Quick probe: can host:443 be reached (assumed yes when an HTTPS proxy is configured)?"""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hf_candidates(hub: str) -> tuple[str, list[str]]:
    """Repo id and weight file names (safetensors first) of an open_clip 'org/repo/[file]' entry."""
    repo_id, filename = os.path.split(hub)  # a trailing '/' means open_clip's default file names
    if not filename:
        return repo_id, list(_HF_WEIGHT_NAMES)
    safe = [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []
    return repo_id, safe + [filename]


def _cached_weight_file(cfg: dict, weights_dir: str | None) -> str | None:
    """A local copy of the weights a pretrained config points to, or None (never downloads)."""
    if cfg.get("hf_hub"):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        repo_id, names = _hf_candidates(cfg["hf_hub"])
        for name in names if try_to_load_from_cache else []:
            found = try_to_load_from_cache(repo_id, name, cache_dir=weights_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    if cfg.get("url"):
        local = Path(weights_dir or Path.home() / ".cache" / "clip") / os.path.basename(cfg["url"])
        if local.is_file():
            return str(local)
    return None


def _weights_host(cfg: dict) -> str:
    """The host a pretrained config would download from."""
    if cfg.get("hf_hub"):
        try:
            import huggingface_hub  # noqa: F401
            return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
        except ImportError:
            pass
    return urlparse(cfg.get("url", "")).hostname or "huggingface.co"


def _weights_file(model_name: str, pretrained: str, weights_dir: str | None) -> tuple[str, bool]:
    """Local path of the CLIP weights (downloading only when online) and whether they need QuickGELU."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg
    fail = f"CLIP weights could not be loaded ({model_name}, {pretrained})"
    if os.path.isfile(pretrained):
        return pretrained, False
    cfg = get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        raise PoddError(f"{fail}: not a known open_clip tag or an existing file; {_FALLBACK_HINT}")
    quick_gelu = bool(cfg.get("quick_gelu", False))
    local = _cached_weight_file(cfg, weights_dir)
    if local:
        return local, quick_gelu
    if _truthy_env("HF_HUB_OFFLINE") or _truthy_env("PODD_OFFLINE"):
        raise PoddError(f"{fail}: not in the local cache and offline mode is set; {_FALLBACK_HINT}")
    host = _weights_host(cfg)
    if not _hub_reachable(host):
        raise PoddError(f"{fail}: not in the local cache and {host} cannot be reached; {_FALLBACK_HINT}")
    try:
        return download_pretrained(cfg, cache_dir=weights_dir), quick_gelu
    except Exception as exc:
        raise PoddError(f"{fail}: download failed ({_first_line(exc)}); {_FALLBACK_HINT}") from exc


def load_clip(model_name: str = "ViT-B-32", pretrained: str | None = "openai", device: str = "cpu",
              weights_dir: str | None = None, init_seed: int = 0) -> Any:
    """An open_clip model in eval mode; pretrained=None gives random weights seeded by init_seed."""
    import open_clip
    import torch
    try:
        if pretrained is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                model = open_clip.create_model(model_name, pretrained=None, device="cpu")
        else:
            path, quick_gelu = _weights_file(model_name, pretrained, weights_dir)
            model = open_clip.create_model(model_name, pretrained=path, device="cpu",
                                           force_quick_gelu=quick_gelu)
    except PoddError:
        raise
    except Exception as exc:
        raise PoddError(f"CLIP weights could not be loaded ({model_name}, {pretrained}): "
                        f"{_first_line(exc)}; {_FALLBACK_HINT}") from exc
    return model.to(device).eval()


def tokenize_classes(classes: Sequence[str], model_name: str = "ViT-B-32",
                     pad_with_eot: bool = False) -> Any:
    """CLIP tokens (n, 77) of the class names with underscores as spaces; optionally EOT-padded."""
    import open_clip
    import torch
    tokenizer = open_clip.get_tokenizer(model_name)
    tokens = tokenizer([c.replace("_", " ") for c in classes])
    if not pad_with_eot:
        return tokens
    eot = getattr(tokenizer, "eot_token_id", None)
    if eot is None:
        raise PoddError(f"the {model_name} tokenizer has no end-of-text id; use variant='pooled'")
    first_eot = (tokens == eot).int().argmax(dim=-1)
    after = torch.arange(tokens.shape[1])[None, :] > first_eot[:, None]
    return tokens.masked_fill(after, eot)


def final_hidden_states(model: Any, tokens: Any) -> Any:
    """ln_final output (n, context, width) for every token, computed as inside CLIP.encode_text."""
    import torch
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
    if not all(hasattr(model, a) for a in needed):
        raise PoddError(f"{type(model).__name__} has no built-in CLIP text tower; use variant='pooled'")
    cast = model.transformer.get_cast_dtype() if hasattr(model.transformer, "get_cast_dtype") else torch.float32
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding.to(cast)
    if getattr(model.transformer, "batch_first", False):
        x = model.transformer(x, attn_mask=model.attn_mask)
    else:  # older open_clip: sequence-first transformer
        x = model.transformer(x.permute(1, 0, 2), attn_mask=model.attn_mask).permute(1, 0, 2)
    return model.ln_final(x)


def encode_classes(model: Any, classes: Sequence[str], variant: str = "pooled",
                   model_name: str = "ViT-B-32") -> Any:
    """Embeddings (n, D) of the class names with an already loaded model (float32, on the CPU)."""
    import torch
    if variant not in VARIANTS:
        raise PoddError(f"unknown CLIP embedding variant {variant!r}; use one of {', '.join(VARIANTS)}")
    device = next(model.parameters()).device
    tokens = tokenize_classes(classes, model_name, pad_with_eot=(variant == "hidden")).to(device)
    with torch.no_grad():
        if variant == "pooled":
            emb = model.encode_text(tokens)
        else:
            emb = final_hidden_states(model, tokens).flatten(1)
    return emb.float().cpu()


def clip_text_embeddings(classes: Sequence[str], variant: str = "pooled", model_name: str = "ViT-B-32",
                         pretrained: str | None = "openai", cache_dir: str | os.PathLike | None = None,
                         device: str = "cpu", weights_dir: str | None = None,
                         init_seed: int = 0) -> Any:
    """CLIP text embeddings (n, D) of the class names, read from or written to the disk cache."""
    classes = list(classes)
    if not classes or not all(isinstance(c, str) and c.strip() for c in classes):
        raise PoddError("classes must be a non-empty list of non-empty class names")
    if variant not in VARIANTS:
        raise PoddError(f"unknown CLIP embedding variant {variant!r}; use one of {', '.join(VARIANTS)}")
    path = embedding_cache_path(classes, variant, model_name, pretrained, cache_dir, init_seed)
    cached = _read_cache(path, classes)
    if cached is not None:
        return cached
    model = load_clip(model_name, pretrained, device, weights_dir, init_seed)
    emb = encode_classes(model, classes, variant, model_name)
    atomic_torch_save({"format": _CACHE_FORMAT, "model_name": model_name,
                       "weights": _weights_label(pretrained, init_seed), "variant": variant,
                       "classes": classes, "embeddings": emb}, path)
    return emb


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


# ---------------------------------------------------------------------------- grid walks, PoCO

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


def file_order(path: str | os.PathLike, classes: Sequence[str], o_y: int, o_x: int) -> Order:
    """An ordering read from a JSON file: a list of rows of class names or of class indices."""
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
    except OSError as exc:
        raise PoddError(f"cannot read class order file {str(path)!r}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise PoddError(f"class order file {str(path)!r} is not valid JSON: {exc.msg} "
                        f"(line {exc.lineno})") from exc
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise PoddError(f"class order file {str(path)!r} must hold a JSON list of rows")
    flat = [v for r in rows for v in r]
    if flat and all(isinstance(v, str) for v in flat):
        rows = _names_to_indices(rows, classes, f"class order file {str(path)!r}")
    return validate_order(rows, len(classes), o_y, o_x)


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
