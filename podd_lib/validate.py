"""One validation layer for configs: CLI flags, --set values and config files all end up here.

A config is a flat dict (config.resolve_config). `check_config` validates every value a user can
set against one pydantic schema (types, ranges, list lengths, choices) and turns the first
problem into a one-line PoddError that names the key and the bad value. It runs before any data
is read. Strict types: `width=3.5`, `zca=maybe` or `steps="ten"` are errors, never coerced.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from .errors import PoddError

Count = Annotated[StrictInt, Field(ge=1)]
NonNegative = Annotated[StrictInt, Field(ge=0)]
Positive = Annotated[Union[StrictInt, StrictFloat], Field(gt=0, allow_inf_nan=False)]
Number = Annotated[Union[StrictInt, StrictFloat], Field(allow_inf_nan=False)]
Pair = Annotated[list[Count], Field(min_length=2, max_length=2)]


class ConfigSchema(BaseModel):
    """Every config key with its type and range (configs/*.toml and the derived keys)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    dataset: StrictStr
    n_classes: NonNegative = 0
    image_size: Pair = [32, 32]
    ipc: Number = 1.0
    class_grid: Union[Literal["auto"], Pair] = "auto"
    patch_grid: Union[Literal["auto"], Pair] = "auto"
    patches: Optional[Union[StrictStr, Pair]] = None
    poster_size: Optional[Pair] = None
    posters: dict[str, Pair] = {}
    order: StrictStr = "identity"
    labels: Literal["fixed", "learned", "auto"] = "auto"
    fixed_labels_from_ipc: Positive = 0.7
    label_sizing: Literal["paper", "release"] = "paper"
    init: StrictStr = "normal"  # the names: config.check_algorithm
    zca: StrictBool = True
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
    syn_aug: StrictStr = "flip_rotate"
    real_aug: StrictStr = "flip_rotate"
    epochs: Positive = 1000
    steps: NonNegative = 0
    eval_models: Count = 8
    eval_steps: Annotated[list[Count], Field(min_length=1)] = [300]
    full_epochs: Positive = 30
    train_per_class: NonNegative = 0
    test_per_class: NonNegative = 0
    checkpoint_every: Count = 50
    seed: StrictInt = 0
    algorithm: StrictStr = "ratbptt"  # the names: config.check_algorithm
    sampling: StrictStr = "random"  # the names: config.check_algorithm
    dream_interval: Count = 10
    dream_pool: NonNegative = 0
    dream_iters: Count = 20
    real_per_class: Count = 256
    syn_steps: Count = 50
    expert_epochs: Count = 2
    max_start_epoch: NonNegative = 2
    syn_lr: Positive = 0.01
    lr_lr: Positive = 1e-5
    n_experts: Count = 5
    lr_teacher: Positive = 0.01
    expert_bs: Count = 256
    expert_aug: StrictStr = "dsa"
    experts_root: StrictStr = ""
    per_class_posters: StrictBool = False
    real_chunk: NonNegative = 128
    channels_last: StrictBool = True
    fused_blocks: StrictBool = True
    conv_dtype: Literal["float32", "bfloat16"] = "float32"
    cpu_kernels: StrictBool = True
    backend: Literal["auto", "fast", "reference"] = "auto"
    autocast: Literal["none", "bfloat16"] = "none"
    compile_steps: Literal["none", "default", "reduce-overhead"] = "none"
    curriculum_draw: Literal["step", "epoch"] = "step"
    clip_order: Literal["text", "release"] = "text"
    real_batches: Literal["random", "epochs"] = "random"
    keep: Literal["last", "best_train"] = "last"
    keep_every: Count = 100
    fixed_labels_form: Literal["majority", "softmax", "proportional"] = "majority"
    deterministic: StrictBool = True
    fixed_curriculum: Optional[NonNegative] = None
    device: Optional[StrictStr] = None
    progress: Optional[StrictBool] = None
    data_root: Optional[StrictStr] = None


KNOWN_KEYS = frozenset(ConfigSchema.model_fields)
# Keys a user sets that must be >= 1 even though a config file may hold 0 ("derive it").
USER_COUNTS = ("steps",)


def check_config(cfg: dict, user: dict | None = None, where: str = "") -> None:
    """Raise one-line PoddError unless every key of cfg is known and of the right type and range.

    user: the keys the user set (--set, flags, a config file); `steps` there must be >= 1.
    """
    unknown = sorted(k for k in cfg if k not in KNOWN_KEYS and k not in DERIVED_KEYS)
    if unknown:
        raise PoddError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_KEYS))}")
    for key in USER_COUNTS:
        if key in (user or {}) and isinstance(user[key], int) and not isinstance(user[key], bool) and user[key] < 1:
            raise PoddError(f"{where}{key} must be an integer >= 1, got {user[key]!r}")
    try:
        ConfigSchema.model_validate({k: v for k, v in cfg.items() if k in KNOWN_KEYS})
    except ValidationError as e:
        errors = e.errors(include_url=False)
        key = errors[0]["loc"][0] if errors[0]["loc"] else "?"
        # Union types report one error per branch; the deepest location (a list item) reads best.
        best = max((er for er in errors if er["loc"] and er["loc"][0] == key), key=lambda er: len(er["loc"]))
        raise PoddError(_one_line(str(key), cfg.get(key), best, where)) from None


# Keys written into config.json by the kit itself (derived or recorded), accepted when a run's
# config is read back.
DERIVED_KEYS = frozenset({"profile", "profile_overrides", "user_overrides", "label_kind", "order_grid", "geometry",
                          "resumes"})


def expects(key: str) -> str:
    """What a key must be, in words ('an integer >= 1', 'true or false', ...)."""
    named = {"Count": "an integer >= 1", "NonNegative": "an integer >= 0", "Positive": "a positive number",
             "Number": "a number", "Pair": "a list of two integers >= 1", "StrictBool": "true or false",
             "StrictStr": "a string", "StrictInt": "an integer"}
    written = str(ConfigSchema.__annotations__[key])  # the annotation as written in the class
    if written in named:
        return named[written]
    if key == "eval_steps":
        return "a non-empty list of integers >= 1"
    if key in ("class_grid", "patch_grid"):
        return '"auto" or a list of two integers >= 1'
    ann = ConfigSchema.model_fields[key].annotation
    if get_origin(ann) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(ann))
    return "of type " + written


def _one_line(key: str, value: Any, err: dict, where: str) -> str:
    """'width must be an integer >= 1, got 'abc'' style message (prefix: where)."""
    return f"{where}{key} must be {expects(key)}, got {value!r}"


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

