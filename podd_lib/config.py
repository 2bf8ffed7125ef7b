"""Configs as plain data: one TOML file per dataset (the paper's values) plus profiles.

    resolve_config("cifar10", ipc=0.5, profile="quick", overrides={"width": 64})

reads configs/cifar10.toml, applies the [quick] (and [quick.cifar10]) profile table, then the
overrides, then derives what depends on the rest (poster size, label kind, step count). The
result is a `Config`, a frozen dataclass read by attribute (`cfg.width`); `cfg.to_dict()` is what
is written next to every run as config.json and what the run key hashes. A config changes only
into a new object: `cfg.replace(...)`, `with_data` for what only the data says.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence

from .algorithms.registry import REGISTRY, Setting, algorithm_keys, declared_settings, setting_defaults
from .errors import PoddError
from .validate import INITS, SAMPLINGS, ConfigSchema, check_config  # noqa: F401 (the names are read from here)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DATASETS = ("cifar10", "cifar100", "cub200", "tinyimagenet")
PROFILES = ("smoke", "quick", "cpu-long", "paper", "paper-text")
OWN_OUTPUT_FOLDER = ("smoke", "cpu-long")  # profiles whose outputs go to <out>/<profile>, not beside quick's
TRAIN_SIZES = {"cifar10": 50000, "cifar100": 50000, "cub200": 5994, "tinyimagenet": 100000}
ALGORITHMS = tuple(REGISTRY)  # the registered algorithms (podd_lib/algorithms/registry.py)


@dataclass(frozen=True)
class Config(ConfigSchema):
    """A resolved config: the paper's settings (ConfigSchema), every registered algorithm's (config_class adds
    them as fields) and what the kit derives or records. Built by resolve_config or from a run's config.json."""

    profile: str = "paper"                                   # the profile it was resolved under
    profile_overrides: dict = field(default_factory=dict)    # the values the profile set
    user_overrides: dict = field(default_factory=dict)       # the values the user set
    label_kind: Optional[str] = None                         # "fixed" or "learned": `labels` with "auto" resolved
    order_grid: Optional[list] = None                        # a run's class grid O (config.json)
    geometry: Optional[dict] = None                          # a run's poster geometry (config.json)
    resumes: Optional[list] = None                           # a run's resumes and what each changed (config.json)
    dataset_path: Optional[str] = None                       # an ImageFolder's absolute location (not hashed)
    # The keys this config holds, in order: those of the TOML files, overrides and derived ones. The
    # fields of other keys keep the schema's defaults and stay out of to_dict, config.json and run keys.
    _keys: tuple = field(default=(), repr=False, compare=False)

    @classmethod
    def from_dict(cls, values: dict, user: dict | None = None, where: str = "") -> Config:
        """A checked config from a dict (a resolved one, a run's config.json); check_config says what is wrong."""
        check_config(values, user, where)
        return _build(values)

    def to_dict(self) -> dict:
        """The keys this config holds and their values (copies): config.json, and what the run key hashes."""
        return {k: copy.deepcopy(getattr(self, k)) for k in self._keys}

    def replace(self, **changes: Any) -> Config:
        """A new config with changes made (checked); a key it did not hold joins its keys."""
        return Config.from_dict({**self.to_dict(), **changes})

    def __reduce__(self):
        """Pickle and deepcopy as the dict it holds (the class with the registry's fields is built at run time)."""
        return _build, (self.to_dict(),)


def _setting_field(s: Setting) -> tuple[str, Any, Any]:
    """An algorithm setting as a dataclass field: name, type, default."""
    if isinstance(s.default, (list, dict)):
        return s.name, s.type, field(default_factory=lambda: copy.deepcopy(s.default))
    return s.name, s.type, field(default=s.default)


@functools.lru_cache(maxsize=None)
def _class_with(settings: tuple[Setting, ...]) -> type[Config]:
    """Config with these algorithm settings as fields."""
    return dataclasses.make_dataclass("Config", [_setting_field(s) for s in settings], bases=(Config,), frozen=True,
                                      namespace={"__module__": __name__})


def config_class() -> type[Config]:
    """Config with every registered algorithm's and DREAM's settings as fields (the registry, read at each call)."""
    return _class_with(tuple(declared_settings().values()))


def _build(values: dict) -> Config:
    """The config holding exactly these (checked) keys."""
    return config_class()(**copy.deepcopy(values), _keys=tuple(values))


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
        values = _read_toml(f"{dataset}.toml")
    elif dataset.startswith("imagefolder:") and len(dataset) > len("imagefolder:"):
        values = _read_toml("imagefolder.toml")
        values["dataset"] = dataset
    else:
        raise PoddError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)} or imagefolder:PATH")
    return {**algorithm_defaults(), **values}


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


def labels_kind(values: dict) -> str:
    """'fixed' or 'learned': 'auto' follows the paper (fixed on CIFAR-10 from 0.7 IPC up; a dataset config
    without fixed_labels_from_ipc is always learned)."""
    if values["labels"] in ("fixed", "learned"):
        return values["labels"]
    if values["labels"] == "auto":
        return "fixed" if values["ipc"] >= values.get("fixed_labels_from_ipc", math.inf) - 1e-9 else "learned"
    raise PoddError(f"labels must be fixed, learned or auto, got {values['labels']!r}")


def resolve_config(
    dataset: str, ipc: float | None = None, profile: str = "paper", overrides: dict | None = None
) -> Config:
    """Base config + profile + overrides, with derived values filled in; unknown keys fail."""
    values = base_config(dataset)
    changes = {**profile_overrides(profile, values["dataset"]), **(overrides or {})}
    values.update(changes)
    if ipc is not None:
        values["ipc"] = float(ipc)
    if values.get("init") == "noise":  # the CLI's name for the paper's N(0, 1) init
        values["init"] = "normal"
    check_config(values, changes)
    values["profile"] = profile
    values["profile_overrides"] = {k: v for k, v in changes.items() if k not in (overrides or {})}
    values["user_overrides"] = dict(overrides or {})
    if values["dataset"].startswith("imagefolder:"):  # where the data is, from any working directory (not hashed)
        values["dataset_path"] = str(Path(values["dataset"][len("imagefolder:"):]).expanduser().resolve())
    return _build(derive(values))


def with_data(cfg: Config, n_classes: int, image_size: Sequence[int] | None = None) -> Config:
    """The config with what only its data says: an ImageFolder's class count and image size, and the grids that
    follow from them; a known dataset's class count must agree with its data."""
    if cfg.dataset in DATASETS and cfg.n_classes != n_classes:
        raise PoddError(f"{cfg.dataset} config expects {cfg.n_classes} classes but the data has {n_classes}")
    if cfg.n_classes:
        return cfg
    values = {**cfg.to_dict(), "n_classes": n_classes}
    if image_size is not None:
        values["image_size"] = [int(v) for v in image_size]
    if cfg.class_grid == "auto" or cfg.patch_grid == "auto":
        values = derive(values)
    return Config.from_dict(values)


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

def irrelevant_keys(cfg: Config) -> set[str]:
    """Algorithm settings this config's algorithm and sampling never read (kept out of run hashes).

    The settings only one algorithm (or DREAM) reads are those its registry entry declares.
    """
    own = algorithm_keys()
    used = set(own.get(cfg.algorithm, ()))
    if cfg.sampling == "dream" or cfg.init == "dream":
        used |= set(own["dream"])
    if cfg.sampling == "dream":  # DREAM picks its own real batches
        used.discard("real_batches")
    unused = {k for keys in own.values() for k in keys} - used
    if cfg.keep == "last":
        unused.add("keep_every")
    if cfg.label_kind == "learned" or cfg.per_class_posters:
        unused.add("fixed_labels_form")
    return unused


def derive(values: dict) -> dict:
    """Fill in class/patch grids, poster size, label kind and step count from the rest (the values of a checked
    config, as a dict)."""
    n = values["n_classes"]
    if n and values["class_grid"] == "auto":
        values["class_grid"] = auto_class_grid(n)
    if values.get("patches"):  # --patches PXxPY
        values["patch_grid"] = parse_grid(values.pop("patches"))
    if values["patch_grid"] == "auto" and isinstance(values["class_grid"], list):
        values["patch_grid"] = [2 * values["class_grid"][0], 2 * values["class_grid"][1]]
    key = f"{values['ipc']:.1f}"
    if not values.get("poster_size") and abs(values["ipc"] - float(key)) < 1e-9 and key in values.get("posters", {}):
        values["poster_size"] = list(values["posters"][key])
    values["label_kind"] = labels_kind(values)
    if not values.get("steps"):
        n_train = TRAIN_SIZES.get(values["dataset"], 0)
        if not n_train:
            raise PoddError(f"set steps for {values['dataset']} (e.g. --steps 1000): its training-set size is unknown")
        values["steps"] = values["epochs"] * math.ceil(n_train / values["bs"])
    return values


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
    if not isinstance(cfg.class_grid, list):
        raise PoddError(f"the class grid of {dataset} is only known from its data")
    o_x, o_y = cfg.class_grid
    h, w = cfg.image_size
    return {"patch_grid": [o_x, o_y], "poster_size": [o_y * h, o_x * w]}
