"""One validation layer for configs: CLI flags, --set values, config files and a run's config.json.

`check_config` checks a config's values as a dict (what config.resolve_config merges from the
TOML files and overrides, or a run's config.json) before config.Config is built from them: against
`ConfigSchema`, a frozen dataclass whose field types say what each key may hold (choices, ranges,
list lengths), against the settings each algorithm declares in its registry entry (`schema_fields`), then
against `RULES`, the constraints between keys, and turns the first problem into a one-line
PoddError that names the key and the bad value. It runs before any data is read. Types are
strict: `width=3.5`, `zca=maybe` or `steps="ten"` are errors, never coerced. The checker is a
few lines of standard library (`conforms`), so the method core imports on a bare Python with torch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Optional, Union, get_args, get_origin, get_type_hints

from .errors import PoddError
from .fast import AUTOCAST, BACKENDS, COMPILE_MODES


@dataclass(frozen=True)
class Range:
    """Bounds on a number: at least `ge`, more than `gt` (None: no bound)."""

    ge: float | None = None
    gt: float | None = None


@dataclass(frozen=True)
class Length:
    """Bounds on a list's length: at least `least`, at most `most` (None: no bound)."""

    least: int
    most: int | None = None


@dataclass(frozen=True)
class Name:
    """Marks a choice among named methods: a bad value reads "unknown <key> 'x'; choose one of ..."."""


SAMPLINGS = ("random", "dream")
INITS = ("normal", "class_areas", "real", "dream")  # the CLI's "noise" is mapped to "normal" by resolve_config

Number = Union[int, float]  # floats must be finite
Count = Annotated[int, Range(ge=1)]
NonNegative = Annotated[int, Range(ge=0)]
Positive = Annotated[Number, Range(gt=0)]
Pair = Annotated[list[Count], Length(2, 2)]
Counts = Annotated[list[Count], Length(1)]

# What each type is, in words, for the error messages.
WORDS: dict[Any, str] = {
    Count: "an integer >= 1", NonNegative: "an integer >= 0", Positive: "a positive number", Number: "a number",
    Pair: "a list of two integers >= 1", Counts: "a non-empty list of integers >= 1", bool: "true or false",
    str: "a string", int: "an integer",
}


def _default(value: Any) -> Any:
    """A dataclass default for a list or dict value (each instance gets its own copy)."""
    return field(default_factory=lambda: type(value)(value))


@dataclass(frozen=True)
class ConfigSchema:
    """Every config key with its type, range and default (configs/*.toml and the derived keys), but the settings of
    one algorithm or of DREAM, which the algorithm registry declares (`schema_fields`)."""

    dataset: str
    n_classes: NonNegative = 0
    image_size: Pair = _default([32, 32])
    ipc: Number = 1.0
    class_grid: Union[Literal["auto"], Pair] = "auto"
    patch_grid: Union[Literal["auto"], Pair] = "auto"
    patches: Optional[Union[str, Pair]] = None
    poster_size: Optional[Pair] = None
    posters: dict[str, Pair] = _default({})
    order: str = "identity"
    labels: Literal["fixed", "learned", "auto"] = "auto"
    fixed_labels_from_ipc: Positive = 0.7
    label_sizing: Literal["paper", "release"] = "paper"
    init: Annotated[Literal[INITS], Name()] = "normal"
    zca: bool = True
    zca_reg: Positive = 0.1
    arch: Literal["convnet", "resnet18", "vgg11", "alexnet"] = "convnet"
    width: Count = 128
    depth: Count = 3
    norm: Literal["instance", "batch", "none"] = "instance"
    pool: Literal["avg", "max"] = "avg"
    window: Count = 60
    totwindow: Count = 200
    minwindow: NonNegative = 0
    inner_lr: Positive = 0.001
    lr: Positive = 0.001
    bs_d: Count = 96
    bs: Count = 5000
    syn_aug: str = "flip_rotate"
    real_aug: str = "flip_rotate"
    epochs: Positive = 1000
    steps: NonNegative = 0  # 0: derived from epochs; a user's value must be >= 1 (check_config)
    eval_models: Count = 8
    eval_steps: Counts = _default([300])
    full_epochs: Positive = 30
    train_per_class: NonNegative = 0
    test_per_class: NonNegative = 0
    checkpoint_every: Count = 50
    seed: int = 0
    algorithm: str = "ratbptt"  # one of the algorithm registry's names (schema_fields)
    sampling: Annotated[Literal[SAMPLINGS], Name()] = "random"
    per_class_posters: bool = False
    real_chunk: NonNegative = 128
    channels_last: bool = True
    fused_blocks: bool = True
    conv_dtype: Literal["float32", "bfloat16"] = "float32"
    cpu_kernels: bool = True
    backend: Literal[BACKENDS] = "auto"
    autocast: Literal[AUTOCAST] = "none"
    compile_steps: Literal[COMPILE_MODES] = "none"
    clip_order: Literal["text", "release"] = "text"
    keep: Literal["last", "best_train"] = "last"
    keep_every: Count = 100
    fixed_labels_form: Literal["majority", "softmax", "proportional"] = "majority"
    deterministic: bool = True
    fixed_curriculum: Optional[NonNegative] = None
    device: Optional[str] = None
    progress: Optional[bool] = None
    data_root: Optional[str] = None


FIELDS: dict[str, Any] = get_type_hints(ConfigSchema, include_extras=True)  # key -> type, in schema order
REQUIRED = frozenset(f.name for f in dataclasses.fields(ConfigSchema)
                     if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
# Keys written into config.json by the kit itself (derived or recorded), accepted when a run's
# config is read back; a user cannot set them.
DERIVED_KEYS = frozenset({"profile", "profile_overrides", "user_overrides", "label_kind", "order_grid", "geometry",
                          "resumes", "dataset_path"})
# Keys a user sets that must be >= 1 even though a config file may hold 0 ("derive it").
USER_COUNTS = ("steps",)

# Rules between keys, checked in order once every key has the right type: (broken when, message).
RULES: tuple[tuple[Callable[[ConfigSchema], bool], str], ...] = (
    (lambda c: c.algorithm == "mtt" and c.sampling != "random",
     "MTT matches expert trajectories and draws no real batches; DREAM sampling does not apply"),
    (lambda c: c.per_class_posters and c.init != "normal",
     "per-class posters start from N(0, 1) noise only (init=normal)"),
    (lambda c: c.conv_dtype != "float32" and not (c.fused_blocks and (c.arch, c.norm, c.pool) == ("convnet", "instance", "avg")),
     "conv_dtype=bfloat16 needs fused_blocks=true and a ConvNet with instance norm and avg pooling "
     "(it is a setting of the fused ConvNet block)"),
    (lambda c: c.backend == "reference" and c.conv_dtype != "float32",
     "conv_dtype=bfloat16 is a setting of the fast backend; use backend=fast or auto"),
    (lambda c: c.autocast != "none" and (c.backend == "fast" or c.conv_dtype != "float32" or c.algorithm != "ratbptt"),
     "autocast=bfloat16 runs RaT-BPTT on the reference layers; use backend=auto or reference, "
     "conv_dtype=float32 and algorithm=ratbptt"),
)


def schema_fields() -> dict[str, Any]:
    """Every config key with its type: ConfigSchema's, `algorithm` among the registered names, then each registered
    algorithm's and DREAM's own settings (podd_lib/algorithms/registry.py, read at each call)."""
    from .algorithms.registry import REGISTRY, declared_settings

    return {**FIELDS, "algorithm": Annotated[Literal[tuple(REGISTRY)], Name()],
            **{name: s.type for name, s in declared_settings().items()}}


# ----------------------------------------------------------------------------- the type checker

def conforms(value: Any, tp: Any) -> bool:
    """Whether value is of type tp, strictly: a bool is no integer, an integer no string, a float is finite."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return conforms(value, args[0]) and all(within(value, bound) for bound in args[1:])
    if origin in (Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if origin is list:
        return isinstance(value, list) and all(conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items())
    if tp is type(None):
        return value is None
    if tp is bool:
        return type(value) is bool
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, float) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    raise TypeError(f"the config checker has no rule for type {tp!r}")


def within(value: Any, bound: Any) -> bool:
    """Whether value (already of the right type) keeps a Range or Length bound; markers always hold."""
    if isinstance(bound, Range):
        return (bound.ge is None or value >= bound.ge) and (bound.gt is None or value > bound.gt)
    if isinstance(bound, Length):
        return len(value) >= bound.least and (bound.most is None or len(value) <= bound.most)
    return True


def describe(tp: Any) -> str:
    """What a value of type tp must be, in words ('an integer >= 1', 'true or false', ...)."""
    if tp in WORDS:
        return WORDS[tp]
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return describe(args[0])
    if origin is Literal:
        return f'"{args[0]}"' if len(args) == 1 else "one of " + ", ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args if a is not type(None))
    if origin is dict:
        return f"a table whose values are each {describe(args[1])}"
    return f"of type {tp}"


def problem(key: str, value: Any, tp: Any) -> str:
    """The one-line message for a bad value of key."""
    if get_origin(tp) is Annotated and any(isinstance(m, Name) for m in get_args(tp)[1:]):
        return f"unknown {key} {value!r}; choose one of {', '.join(get_args(get_args(tp)[0]))}"
    return f"{key} must be {describe(tp)}, got {value!r}"


def check_config(values: dict, user: dict | None = None, where: str = "") -> ConfigSchema:
    """The config as a ConfigSchema, or a one-line PoddError at its first unknown key, bad value or broken rule.

    user: the keys the user set (--set, flags, a config file): they must be schema keys, and `steps`
    there must be >= 1. where: a prefix for the message (e.g. the file's name).
    """
    user, fields = user or {}, schema_fields()
    unknown = sorted({k for k in values if k not in fields.keys() | DERIVED_KEYS}
                     | {k for k in user if k not in fields})
    if unknown:
        raise PoddError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    for key in USER_COUNTS:
        if key in user and not conforms(user[key], Count):
            raise PoddError(f"{where}{key} must be {describe(Count)}, got {user[key]!r}")
    for key, tp in fields.items():
        if (key in values and not conforms(values[key], tp)) or (key in REQUIRED and key not in values):
            raise PoddError(where + problem(key, values.get(key), tp))
    checked = ConfigSchema(**{k: v for k, v in values.items() if k in FIELDS})
    for broken, message in RULES:
        if broken(checked):
            raise PoddError(where + message)
    return checked


DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(name: str) -> None:
    """auto, cpu, mps, cuda or cuda:N; cuda only when a CUDA device is present (checked by the caller)."""
    if not DEVICE.match(name):
        raise PoddError(f"unknown device {name!r}; use auto, cpu or cuda (cuda:N)")


def memory_bytes() -> int:
    """Physical memory of this machine in bytes (0 when unknown)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def check_patches_fit(n_patches: int, channels: int, h: int, w: int, d_w: int, d_h: int, p_x: int, p_y: int) -> None:
    """Refuse patch grids with more patches than pixels along an axis, or a patch set over half the memory."""
    for count, length, window, axis in ((p_x, d_w, w, "x"), (p_y, d_h, h, "y")):
        if count > length:
            raise PoddError(f"{count} patches along {axis} on a {length} px poster: more patches than pixels "
                            f"({length - window + 1} distinct positions)")
    need = n_patches * channels * h * w * 4
    have = memory_bytes()
    if have and need > have / 2:
        raise PoddError(f"{n_patches} patches need {need / 2**30:.1f} GiB as float32, more than half of this "
                        f"machine's {have / 2**30:.1f} GiB; use a smaller patch grid")

