"""Configs as plain data: one TOML file per dataset (the paper's values) plus profiles.

    resolve_config("cifar10", ipc=0.5, profile="quick", overrides={"width": 64})

reads configs/cifar10.toml, applies the [quick] (and [quick.cifar10]) profile table, then the
overrides, then derives what depends on the rest (poster size, label kind, step count). The
result is a flat dict that is written next to every run as config.json.
"""

from __future__ import annotations

import math
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from .algorithms.registry import REGISTRY, algorithm_keys, setting_defaults
from .errors import PoddError
from .validate import INITS, SAMPLINGS, check_config  # noqa: F401 (the names are read from here)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DATASETS = ("cifar10", "cifar100", "cub200", "tinyimagenet")
PROFILES = ("smoke", "quick", "cpu-long", "paper", "paper-text")
OWN_OUTPUT_FOLDER = ("smoke", "cpu-long")  # profiles whose outputs go to <out>/<profile>, not beside quick's
TRAIN_SIZES = {"cifar10": 50000, "cifar100": 50000, "cub200": 5994, "tinyimagenet": 100000}
ALGORITHMS = tuple(REGISTRY)  # the registered algorithms (podd_lib/algorithms/registry.py)


def _read_toml(name: str) -> dict:
    """Parse one file of podd_lib/configs (a syntax error names the file, in one line)."""
    path = resources.files("podd_lib.configs").joinpath(name)
    return _parse_toml(path.read_text(), str(path))


def _parse_toml(text: str, where: str) -> dict:
    """TOML text -> dict; a syntax error is a one-line PoddError naming the file."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PoddError(f"{where}: TOML syntax error: {e}") from None


def read_config_file(path: str) -> dict:
    """A user's TOML file of config overrides (flat key = value), checked like --set values."""
    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        raise PoddError(f"cannot read config file {path}: {getattr(e, 'strerror', None) or e}") from None
    data = _parse_toml(text, path)
    tables = sorted(k for k, v in data.items() if isinstance(v, dict))
    if tables:
        raise PoddError(f"{path}: config files hold flat key = value lines; found table(s) {', '.join(tables)}")
    return data


def base_config(dataset: str) -> dict:
    """The paper config of a dataset (or the generic ImageFolder recipe)."""
    if dataset in DATASETS:
        cfg = _read_toml(f"{dataset}.toml")
    elif dataset.startswith("imagefolder:") and len(dataset) > len("imagefolder:"):
        cfg = _read_toml("imagefolder.toml")
        cfg["dataset"] = dataset
    else:
        raise PoddError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)} or imagefolder:PATH")
    return {**algorithm_defaults(), **cfg}


def algorithm_defaults() -> dict:
    """The algorithm settings every dataset shares: configs/algorithms.toml's and each registered algorithm's own."""
    return {**_read_toml("algorithms.toml"), **setting_defaults()}


def run_list(profile: str) -> dict:
    """Which runs a profile's notebooks make where it makes fewer than the paper (configs/runs.toml)."""
    if profile not in PROFILES:
        raise PoddError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    return _read_toml("runs.toml").get(profile, {})


# The distillation seeds of the runs a claim compares, where runs.toml names none: the claims rule
# (kit.claims.MIN_SEEDS) needs at least three paired seeds.
CLAIM_SEEDS = (0, 1, 2)


def profile_seeds(profile: str, seeds: Sequence[int] | None = None) -> list[int]:
    """The seeds of a notebook's claim-carrying runs: `seeds` when given, else the profile's (runs.toml), else CLAIM_SEEDS."""
    chosen = seeds if seeds is not None else run_list(profile).get("seeds", CLAIM_SEEDS)
    try:
        out = [int(s) for s in chosen]
    except (TypeError, ValueError):
        raise PoddError(f"seeds must be a list of integers, got {chosen!r}") from None
    if not out or len(set(out)) != len(out) or min(out) < 0:
        raise PoddError(f"seeds must be distinct non-negative integers, got {chosen!r}")
    return out


def profile_out_dir(out_dir: str, profile: str) -> str:
    """Where a profile's outputs go: <out>/smoke and <out>/cpu-long, else <out> itself."""
    return str(Path(out_dir) / profile) if profile in OWN_OUTPUT_FOLDER else str(out_dir)


def profile_overrides(profile: str, dataset: str) -> dict:
    """The overrides a profile makes for a dataset: those of the profile it `extends`, then its own
    [profile] table, then [profile.dataset]."""
    if profile not in PROFILES:
        raise PoddError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    table = _read_toml("profiles.toml").get(profile, {})
    parent = profile_overrides(table["extends"], dataset) if "extends" in table else {}
    common = {k: v for k, v in table.items() if not isinstance(v, dict) and k != "extends"}
    return {**parent, **common, **table.get(dataset, {})}


def parse_value(text: str) -> Any:
    """A --set value: TOML syntax when it parses (numbers, booleans, lists), else a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if text and text[0] in "[{\"'":
            raise PoddError(f"cannot parse {text!r}: not a valid TOML list, table or string") from None
        return text


def parse_sets(items: list[str] | None) -> dict:
    """['width=32', 'window=10'] -> {'width': 32, 'window': 10}."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PoddError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = parse_value(value.strip())
        except PoddError as e:
            raise PoddError(f"--set {key.strip()}: {e}") from None
    return out


def auto_class_grid(n: int) -> list[int]:
    """The most square [o_x, o_y] with o_x * o_y = n and o_x >= o_y."""
    o_y = max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)
    return [n // o_y, o_y]


def labels_kind(cfg: dict) -> str:
    """'fixed' or 'learned': 'auto' follows the paper (fixed on CIFAR-10 from 0.7 IPC up)."""
    if cfg["labels"] in ("fixed", "learned"):
        return cfg["labels"]
    if cfg["labels"] == "auto":
        return "fixed" if cfg["ipc"] >= cfg.get("fixed_labels_from_ipc", math.inf) - 1e-9 else "learned"
    raise PoddError(f"labels must be fixed, learned or auto, got {cfg['labels']!r}")


def resolve_config(
    dataset: str, ipc: float | None = None, profile: str = "paper", overrides: dict | None = None
) -> dict:
    """Base config + profile + overrides, with derived values filled in; unknown keys fail."""
    cfg = base_config(dataset)
    changes = {**profile_overrides(profile, cfg["dataset"]), **(overrides or {})}
    cfg.update(changes)
    if ipc is not None:
        cfg["ipc"] = float(ipc)
    if cfg.get("init") == "noise":  # the CLI's name for the paper's N(0, 1) init
        cfg["init"] = "normal"
    check_config(cfg, changes)
    cfg["profile"] = profile
    cfg["profile_overrides"] = {k: v for k, v in changes.items() if k not in (overrides or {})}
    cfg["user_overrides"] = dict(overrides or {})
    if cfg["dataset"].startswith("imagefolder:"):  # where the data is, from any working directory (not hashed)
        cfg["dataset_path"] = str(Path(cfg["dataset"][len("imagefolder:"):]).expanduser().resolve())
    return derive(cfg)


# Where the paper's text and the authors' release (which produced the paper's numbers) differ:
# key -> (the text's value, the release's value). The text's are the defaults (algorithm_defaults);
# the `paper` profile takes the release's, `paper-text` the text's. The fifth difference is `init`
# ("normal" in the text, "class_areas" in the release), a dataset-config key.
TEXT_OR_RELEASE = {
    "curriculum_draw": ("step", "epoch"),   # RaT-BPTT's curriculum c: drawn every outer step, or once per epoch
    "clip_order": ("text", "release"),      # clip at 2 x the previous EMA then update it, or update then clip
    "real_batches": ("random", "epochs"),   # independent random real batches, or a walk over shuffled epochs
    "keep": ("last", "best_train"),         # the last poster (the text names no selection), or the best on the training set
    "fixed_labels_form": ("majority", "softmax"),  # fixed labels: the majority class, or a softmax of the pixel counts
}

def irrelevant_keys(cfg: dict) -> set[str]:
    """Algorithm settings this config's algorithm and sampling never read (kept out of run hashes).

    The settings only one algorithm (or DREAM) reads are those its registry entry declares.
    """
    own = algorithm_keys()
    used = set(own.get(cfg.get("algorithm", "ratbptt"), ()))
    if cfg.get("sampling") == "dream" or cfg.get("init") == "dream":
        used |= set(own["dream"])
    if cfg.get("sampling") == "dream":  # DREAM picks its own real batches
        used.discard("real_batches")
    unused = {k for keys in own.values() for k in keys} - used
    if cfg.get("keep", "last") == "last":
        unused.add("keep_every")
    if cfg.get("label_kind") == "learned" or cfg.get("per_class_posters"):
        unused.add("fixed_labels_form")
    return unused


def derive(cfg: dict) -> dict:
    """Fill in class/patch grids, poster size, label kind and step count from the rest (a checked config)."""
    n = cfg["n_classes"]
    if n and cfg["class_grid"] == "auto":
        cfg["class_grid"] = auto_class_grid(n)
    if cfg.get("patches"):  # --patches PXxPY
        cfg["patch_grid"] = parse_grid(cfg.pop("patches"))
    if cfg["patch_grid"] == "auto" and isinstance(cfg["class_grid"], list):
        cfg["patch_grid"] = [2 * cfg["class_grid"][0], 2 * cfg["class_grid"][1]]
    key = f"{cfg['ipc']:.1f}"
    if not cfg.get("poster_size") and abs(cfg["ipc"] - float(key)) < 1e-9 and key in cfg.get("posters", {}):
        cfg["poster_size"] = list(cfg["posters"][key])
    cfg["label_kind"] = labels_kind(cfg)
    if not cfg.get("steps"):
        n_train = TRAIN_SIZES.get(cfg["dataset"], 0)
        if not n_train:
            raise PoddError(f"set steps for {cfg['dataset']} (e.g. --steps 1000): its training-set size is unknown")
        cfg["steps"] = cfg["epochs"] * math.ceil(n_train / cfg["bs"])
    return cfg


def parse_grid(text: str | list) -> list[int]:
    """'16x6' -> [16, 6] (x first)."""
    if isinstance(text, list):
        return [int(v) for v in text]
    try:
        px, py = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise PoddError(f"grid must look like 16x6 (x by y), got {text!r}") from None
    return [px, py]


def tiling_overrides(dataset: str, profile: str = "paper") -> dict:
    """Config overrides for the RaT-BPTT baseline at 1 IPC: one patch per class area, tiling the poster.

    The patch grid equals the class grid and the poster is exactly o_y*h by o_x*w pixels (CIFAR-10:
    5x2 patches on a 64x160 poster), so the patches do not overlap: 1 image per class, as in RaT-BPTT.
    """
    cfg = resolve_config(dataset, 1.0, profile)
    if not isinstance(cfg["class_grid"], list):
        raise PoddError(f"the class grid of {dataset} is only known from its data")
    o_x, o_y = cfg["class_grid"]
    h, w = cfg["image_size"]
    return {"patch_grid": [o_x, o_y], "poster_size": [o_y * h, o_x * w]}
