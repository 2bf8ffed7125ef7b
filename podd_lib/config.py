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
from typing import Any

from .errors import PoddError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DATASETS = ("cifar10", "cifar100", "cub200", "tinyimagenet")
PROFILES = ("smoke", "quick", "paper")
TRAIN_SIZES = {"cifar10": 50000, "cifar100": 50000, "cub200": 5994, "tinyimagenet": 100000}


def _read_toml(name: str) -> dict:
    """Parse one file of podd_lib/configs."""
    return tomllib.loads(resources.files("podd_lib.configs").joinpath(name).read_text())


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
    """The algorithm settings every dataset shares (configs/algorithms.toml)."""
    return _read_toml("algorithms.toml")


def profile_overrides(profile: str, dataset: str) -> dict:
    """The overrides a profile makes for a dataset (the [profile] table, then [profile.dataset])."""
    if profile not in PROFILES:
        raise PoddError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    table = _read_toml("profiles.toml").get(profile, {})
    common = {k: v for k, v in table.items() if not isinstance(v, dict)}
    return {**common, **table.get(dataset, {})}


def parse_value(text: str) -> Any:
    """A --set value: TOML syntax when it parses (numbers, booleans, lists), else a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_sets(items: list[str] | None) -> dict:
    """['width=32', 'window=10'] -> {'width': 32, 'window': 10}."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PoddError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = parse_value(value.strip())
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
    known = set(cfg) | {"poster_size", "patches", "fixed_curriculum", "device", "progress"}
    changes = {**profile_overrides(profile, cfg["dataset"]), **(overrides or {})}
    unknown = sorted(k for k in changes if k not in known)
    if unknown:
        raise PoddError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    cfg.update(changes)
    if ipc is not None:
        cfg["ipc"] = float(ipc)
    cfg["profile"] = profile
    cfg["profile_overrides"] = {k: v for k, v in changes.items() if k not in (overrides or {})}
    cfg["user_overrides"] = dict(overrides or {})
    return derive(cfg)


ALGORITHMS = ("ratbptt", "mtt", "dm", "dc")
SAMPLINGS = ("random", "dream")
INITS = ("normal", "class_areas", "real", "dream")


# Settings that only one algorithm (or DREAM sampling) reads; the rest of a config ignores them.
ALGORITHM_KEYS = {
    "mtt": ("syn_steps", "expert_epochs", "max_start_epoch", "syn_lr", "lr_lr", "n_experts", "lr_teacher",
            "expert_bs", "expert_aug", "experts_root"),
    "dm": ("real_per_class",),
    "dc": ("real_per_class",),
    "dream": ("dream_interval", "dream_pool", "dream_iters"),
}


def irrelevant_keys(cfg: dict) -> set[str]:
    """Algorithm settings this config's algorithm and sampling never read (kept out of run hashes)."""
    used = set(ALGORITHM_KEYS.get(cfg.get("algorithm", "ratbptt"), ()))
    if cfg.get("sampling") == "dream" or cfg.get("init") == "dream":
        used |= set(ALGORITHM_KEYS["dream"])
    return {k for keys in ALGORITHM_KEYS.values() for k in keys} - used


def check_algorithm(cfg: dict) -> None:
    """Unknown algorithm, sampling or init names fail in one line, before any data is read."""
    for key, allowed in (("algorithm", ALGORITHMS), ("sampling", SAMPLINGS), ("init", INITS)):
        if cfg[key] not in allowed:
            raise PoddError(f"unknown {key} {cfg[key]!r}; choose one of {', '.join(allowed)}")
    if cfg["algorithm"] == "mtt" and cfg["sampling"] != "random":
        raise PoddError("MTT matches expert trajectories and draws no real batches; DREAM sampling does not apply")
    if cfg.get("per_class_posters") and cfg["init"] != "normal":
        raise PoddError("per-class posters start from N(0, 1) noise only (init=normal)")
    for key, low in (("real_per_class", 1), ("dream_interval", 1), ("dream_pool", 0), ("dream_iters", 1),
                     ("syn_steps", 1), ("expert_epochs", 1), ("max_start_epoch", 0), ("n_experts", 1),
                     ("expert_bs", 1), ("real_chunk", 0)):
        if not isinstance(cfg.get(key), int) or cfg[key] < low:
            raise PoddError(f"{key} must be an integer >= {low}, got {cfg.get(key)!r}")
    if cfg.get("conv_dtype", "float32") not in ("float32", "bfloat16"):
        raise PoddError(f"conv_dtype must be float32 or bfloat16, got {cfg.get('conv_dtype')!r}")
    if cfg.get("conv_dtype", "float32") != "float32" and not (
            cfg.get("fused_blocks", True) and (cfg.get("arch"), cfg.get("norm"), cfg.get("pool")) == ("convnet", "instance", "avg")):
        raise PoddError("conv_dtype=bfloat16 needs fused_blocks=true and a ConvNet with instance norm and avg pooling "
                        "(it is a setting of the fused ConvNet block)")
    for key in ("channels_last", "fused_blocks", "cpu_kernels", "per_class_posters", "deterministic"):
        if not isinstance(cfg.get(key, False), bool):
            raise PoddError(f"{key} must be true or false, got {cfg.get(key)!r}")
    for key in ("syn_lr", "lr_lr", "lr_teacher"):
        if not isinstance(cfg.get(key), (int, float)) or cfg[key] <= 0:
            raise PoddError(f"{key} must be a positive number, got {cfg.get(key)!r}")


def derive(cfg: dict) -> dict:
    """Fill in class/patch grids, poster size, label kind and step count from the rest."""
    if cfg.get("init") == "noise":  # the CLI's name for the paper's N(0, 1) init
        cfg["init"] = "normal"
    check_algorithm(cfg)
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
