"""The evaluation protocol (paper section 5.1; notes section 6) and its baselines.

K freshly initialised networks (default 8 ConvNets) are trained TOGETHER on the distilled set:
their parameters are stacked along a leading model axis (`torch.func.stack_module_state`), the
forward pass is `vmap(functional_call)`, and one functional Adam (`podd_lib.optim.adam_step`,
lr 1e-3, betas 0.9/0.999, eps 1e-8) updates all of them. Every step, each model draws its own
random batch of min(bs_d, N) distinct synthetic images (uniform, without replacement inside the
batch) and its own augmentation; the loss is soft-label cross-entropy
-(y * log_softmax(logits)).sum(-1).mean() with the targets used as given. At each step listed in
`steps` every model is tested on the whole real test set, and the accuracies, their mean and
their POPULATION standard deviation (ddof=0) over models are recorded. Nothing is selected on
the test set.

Models with batch norm (running statistics are updated in place, which vmap cannot batch) are
trained by a loop over models with the same maths, random draws and Adam; the result says so
(`"vectorized": false`). `vectorize=False` forces that loop for any model (used by the tests to
check that both paths agree). By default the models are stacked on CUDA only.

The networks follow the config's speed-backend rule (`podd_lib.fast.resolve_backend`): "auto" is
the fast path on the CPU (fused ConvNet blocks, channels-last batches in the loop over models) and
PyTorch's reference layers in NCHW elsewhere. Under vmap the reference layers run either way. Two
GPU levers are opt-in: `compile_steps` compiles the vmapped training step (CUDA only), `autocast`
runs the forward passes in bfloat16 (it changes the numbers).

The recipe (networks, K, steps, batch, learning rate, augmentation, seed, speed levers) is one frozen
`EvalProtocol`, built from a run's config by `protocol_from_config`, checked when it is made and
passed whole to `train_and_test` and `evaluate_distilled`.

Randomness: `eval_rng(seed, K)` derives K initialisation seeds and one CPU generator for batches
and augmentation from `seed`, so the soft- and hard-label runs of one seed share initialisations,
batches and augmentations (a paired comparison), and results do not depend on the device.
Accuracies are percentages.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from podd_lib.augment import parse_strategy
from podd_lib.errors import PoddError
from podd_lib.fast import AUTOCAST, BACKENDS, COMPILE_MODES
from podd_lib.io import atomic_write_json
from podd_lib.models import make_model
from podd_lib.training import STD_NOTE, hardened, train_models

if TYPE_CHECKING:
    from .config import Config

DEFAULT_STEPS = (300, 600, 1000, 2000)


# ---------------------------------------------------------------- validation (before any compute)

def _device(device: str | torch.device) -> torch.device:
    """torch.device(device), or PoddError."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise PoddError(f"bad device {device!r}: {e}") from None


def _check_steps(steps: Sequence[int]) -> tuple[int, ...]:
    """Sorted distinct positive step counts, or PoddError."""
    try:
        out = tuple(sorted({int(s) for s in steps}))
    except (TypeError, ValueError):
        raise PoddError(f"steps must be positive integers, got {steps!r}") from None
    if not out or out[0] < 1:
        raise PoddError(f"steps must be positive integers, got {steps!r}")
    return out


def _check_images(name: str, x: Any) -> Tensor:
    """x as a float (N, C, H, W) tensor with N >= 1, or PoddError."""
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point() or x.shape[0] < 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise PoddError(f"{name} must be float images (N, C, H, W) with N >= 1, got {shape}")
    return x


def _check_soft_labels(y: Any, n: int) -> Tensor:
    """y as (n, classes) finite non-negative label vectors with positive mass, or PoddError."""
    if not isinstance(y, Tensor) or y.dim() != 2 or y.shape[0] != n or not y.is_floating_point():
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise PoddError(f"y_syn must be float label vectors ({n}, num_classes), got {shape}")
    if y.shape[1] < 2 or not torch.isfinite(y).all() or (y < 0).any() or (y.sum(-1) <= 0).any():
        raise PoddError("y_syn rows must be finite, non-negative, with positive sum, and >= 2 classes")
    return y


def _check_int_labels(name: str, y: Any, n: int, num_classes: int) -> Tensor:
    """y as (n,) integer labels in [0, num_classes), or PoddError."""
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != n or y.is_floating_point():
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise PoddError(f"{name} must be ({n},) integer labels, got {shape}")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise PoddError(f"{name} has labels outside [0, {num_classes})")
    return y.long()


def _num_classes(y: Any, num_classes: int | None) -> int:
    """num_classes if given, else 1 + the largest label of the tensor y."""
    if num_classes is not None:
        return int(num_classes)
    if not isinstance(y, Tensor) or y.numel() == 0:
        raise PoddError("labels must be a non-empty integer tensor (or pass num_classes)")
    return int(y.max()) + 1


def _check_levers(backend: str, compile_steps: str, autocast: str) -> None:
    """Raise PoddError on an unknown backend, compile mode or autocast name."""
    for name, value, allowed in (("backend", backend, BACKENDS), ("compile_steps", compile_steps, COMPILE_MODES),
                                 ("autocast", autocast, AUTOCAST)):
        if value not in allowed:
            raise PoddError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _check_common(bs: int, lr: float, num_models: int, augmentation: str, aug_mode: str) -> None:
    """Raise PoddError on a bad batch size, learning rate, model count or augmentation."""
    if int(bs) < 1 or not (float(lr) > 0) or int(num_models) < 1:
        raise PoddError(f"need batch size >= 1, lr > 0, num_models >= 1 "
                        f"(got {bs}, {lr}, {num_models})")
    parse_strategy(augmentation)
    if aug_mode not in ("single", "all"):
        raise PoddError(f"unknown augmentation mode {aug_mode!r}; choose single or all")


def _model_fn(arch: str, channels: int, num_classes: int, im_size: tuple[int, int],
              arch_kwargs: dict | None) -> Callable[[], nn.Module]:
    """A zero-argument network constructor, checked once now (PoddError on bad names)."""
    kwargs = dict(arch_kwargs or {})
    allowed = {"width", "depth", "norm", "pool"}
    if set(kwargs) - allowed:
        raise PoddError(f"unknown arch_kwargs {sorted(set(kwargs) - allowed)}; "
                        f"allowed {sorted(allowed)}")
    fn = lambda: make_model(arch, channels, num_classes, im_size, **kwargs)  # noqa: E731
    with torch.device("meta"):
        fn()
    return fn


def check_models_fit_config(cfg: Config, num_models: int, device: str | torch.device, channels: int = 3) -> None:
    """The memory check of training.check_models_fit from a config alone (no data read); skipped without a class count."""
    from .training import check_models_fit

    if not cfg.n_classes or not cfg.image_size:
        return
    h, w = (int(v) for v in cfg.image_size)
    fn = _model_fn(cfg.arch, channels, int(cfg.n_classes), (h, w),
                   {k: getattr(cfg, k) for k in ("width", "depth", "norm", "pool")})
    with torch.device("meta"):
        n_params = sum(p.numel() for p in fn().parameters())
    check_models_fit(num_models, n_params, int(cfg.bs_d) * channels * h * w, _device(device))


# ---------------------------------------------------------------- the protocol

ARCH_KEYS = ("width", "depth", "norm", "pool")


def _as(kind: type, name: str, value: Any) -> Any:
    """kind(value), or PoddError naming the field."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise PoddError(f"{name} must be {kind.__name__}, got {value!r}") from None


@dataclass(frozen=True)
class EvalProtocol:
    """How a distilled set is evaluated: K fresh networks, their training recipe and when they are tested.

    width, depth, norm and pool left as None take the architecture's defaults (models.make_model).
    Checked when made: bad values raise PoddError before any data is read.
    """

    arch: str = "convnet"
    num_models: int = 8
    steps: tuple[int, ...] = DEFAULT_STEPS
    bs_d: int = 96
    lr: float = 1e-3
    augmentation: str = "flip_rotate"
    aug_mode: str = "single"
    seed: int = 0
    width: int | None = None
    depth: int | None = None
    norm: str | None = None
    pool: str | None = None
    backend: str = "auto"
    compile_steps: str = "none"
    autocast: str = "none"

    def __post_init__(self) -> None:
        """Normalise the numbers (sorted distinct steps, ints, a float lr) and check every field."""
        fixed = {"steps": _check_steps(self.steps), "num_models": _as(int, "num_models", self.num_models),
                 "bs_d": _as(int, "bs_d", self.bs_d), "lr": _as(float, "lr", self.lr),
                 "seed": _as(int, "seed", self.seed)}
        for name in ("width", "depth"):
            if getattr(self, name) is not None:
                fixed[name] = _as(int, name, getattr(self, name))
        for name, value in fixed.items():
            object.__setattr__(self, name, value)
        _check_common(self.bs_d, self.lr, self.num_models, self.augmentation, self.aug_mode)
        _check_levers(self.backend, self.compile_steps, self.autocast)

    @property
    def arch_kwargs(self) -> dict:
        """The network's shape settings that are set: a subset of width, depth, norm, pool."""
        return {k: getattr(self, k) for k in ARCH_KEYS if getattr(self, k) is not None}


# ---------------------------------------------------------------- public API

def train_and_test(
    x_syn: Tensor,
    y_syn: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    protocol: EvalProtocol = EvalProtocol(),
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    hard_labels: bool = False,
    vectorize: bool | None = None,
    return_params: bool = False,
    state_path: str | os.PathLike | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict:
    """Train the protocol's K fresh networks on (x_syn, y_syn); test accuracy (%) at each of its steps.

    The result is JSON-able unless return_params=True (then it also holds the final stacked
    "params" and "buffers"). state_path: where the training state is kept so that an interrupted
    call continues (see training.train_models); on_step(step, total) follows progress.
    """
    x_syn = _check_images("x_syn", x_syn)
    y_syn = _check_soft_labels(y_syn, x_syn.shape[0])
    x_test = _check_images("x_test", x_test)
    if x_test.shape[1:] != x_syn.shape[1:]:
        raise PoddError(f"x_test images {tuple(x_test.shape[1:])} differ from x_syn "
                        f"{tuple(x_syn.shape[1:])}")
    num_classes = y_syn.shape[1]
    y_test = _check_int_labels("y_test", y_test, x_test.shape[0], num_classes)
    p = _check_protocol(protocol)
    dev = _device(device)
    c, h, w = x_syn.shape[1:]
    model_fn = _model_fn(p.arch, c, num_classes, (h, w), p.arch_kwargs)
    y = hardened(y_syn) if hard_labels else y_syn
    out = train_models(x_syn, y, x_test, y_test, model_fn, p.num_models, p.steps,
                        p.bs_d, p.lr, p.augmentation, p.aug_mode, p.seed, dev, progress,
                        vectorize, epochs_mode=False,
                        desc=f"eval {p.arch} {'hard' if hard_labels else 'soft'}",
                        return_params=return_params, backend=p.backend, compile_steps=p.compile_steps,
                        autocast=p.autocast, state_path=state_path, on_step=on_step)
    return {"labels": "hard (one-hot argmax)" if hard_labels else "soft (as given)", **out}


def _check_protocol(protocol: Any) -> EvalProtocol:
    """protocol itself if it is an EvalProtocol, else PoddError."""
    if not isinstance(protocol, EvalProtocol):
        raise PoddError(f"protocol must be an EvalProtocol (see protocol_from_config), got {type(protocol).__name__}")
    return protocol


def _check_real(real: Any) -> None:
    """Raise PoddError unless real has x_test, y_test, classes, image_size, channels."""
    need = ("x_test", "y_test", "classes", "image_size", "channels")
    missing = [a for a in need if not hasattr(real, a)]
    if missing:
        raise PoddError(f"real data object lacks attribute(s): {', '.join(missing)}")


def _hw(image_size: Any) -> tuple[int, int]:
    """(H, W) from an int or a pair."""
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def evaluate_distilled(
    x_syn: Tensor,
    y_syn: Tensor,
    real: Any,
    protocol: EvalProtocol = EvalProtocol(),
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    with_hard_labels: bool = True,
    vectorize: bool | None = None,
    resume_dir: str | os.PathLike | None = None,
    on_step: Callable[[str, int, int], None] | None = None,
) -> dict:
    """The paper's protocol on a distilled set: {"protocol", "soft", "hard"} (hard None if skipped).

    `real` is any object with x_test, y_test, classes, image_size and channels (e.g. data.RealData).
    With resume_dir, each label kind's finished result is kept there (eval-soft.json, eval-hard.json)
    and its training state while it runs (eval-soft.pt, ...), so an interrupted evaluation continues
    where it stopped; the caller removes the folder when it has stored the result.
    on_step(kind, step, total) follows progress.
    """
    _check_real(real)
    p = _check_protocol(protocol)
    x_syn = _check_images("x_syn", x_syn)
    num_classes, (h, w) = len(real.classes), _hw(real.image_size)
    if tuple(x_syn.shape[1:]) != (int(real.channels), h, w):
        raise PoddError(f"x_syn images {tuple(x_syn.shape[1:])} do not match the real data "
                        f"({real.channels}, {h}, {w})")
    y_syn = _check_soft_labels(y_syn, x_syn.shape[0])
    if y_syn.shape[1] != num_classes:
        raise PoddError(f"y_syn has {y_syn.shape[1]} classes, the real data {num_classes}")
    record = {
        "arch": p.arch, "arch_kwargs": p.arch_kwargs, "num_models": p.num_models,
        "steps": list(p.steps), "bs_d": p.bs_d, "lr": p.lr,
        "optimizer": "Adam(betas=(0.9, 0.999), eps=1e-8), no weight decay, no schedule",
        "loss": "soft-label cross-entropy", "augmentation": p.augmentation, "aug_mode": p.aug_mode,
        "batches": "per model, per step: min(bs_d, n_syn) distinct random synthetic images",
        "seed": p.seed, "std": STD_NOTE, "accuracy_unit": "percent",
        "selection": "none: accuracies reported at fixed steps, nothing chosen on the test set",
        "n_syn": int(x_syn.shape[0]), "n_test": int(real.x_test.shape[0]),
        "num_classes": num_classes, "channels": int(real.channels), "image_size": [h, w],
    }
    kw = dict(device=device, progress=progress, vectorize=vectorize)

    def phase(kind: str) -> dict:
        """One label kind's result, kept in resume_dir when given."""
        hook = None if on_step is None else (lambda step, total: on_step(kind, step, total))
        if resume_dir is None:
            return train_and_test(x_syn, y_syn, real.x_test, real.y_test, p, hard_labels=kind == "hard",
                                  on_step=hook, **kw)
        done, state = Path(resume_dir) / f"eval-{kind}.json", Path(resume_dir) / f"eval-{kind}.pt"
        if done.exists():
            return json.loads(done.read_text())
        out = train_and_test(x_syn, y_syn, real.x_test, real.y_test, p, hard_labels=kind == "hard",
                             state_path=state, on_step=hook, **kw)
        atomic_write_json(done, out)
        state.unlink(missing_ok=True)
        return out

    soft = phase("soft")
    hard = phase("hard") if with_hard_labels else None
    return {"protocol": record, "soft": soft, "hard": hard}


def progress_key(protocol: EvalProtocol, x_syn: Tensor, y_syn: Tensor, with_hard_labels: bool, data: dict) -> str:
    """A short hash of what an evaluation's result depends on: protocol, the set's bytes, label kinds and test data.

    An evaluation resumes only from progress with the same key, so a changed poster, --models or
    --eval-steps starts afresh instead of mixing two evaluations.
    """
    h = hashlib.sha256(json.dumps({"protocol": asdict(protocol), "hard": bool(with_hard_labels),
                                   "data": data}, sort_keys=True, default=str).encode())
    for t in (x_syn, y_syn):
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def protocol_from_config(cfg: Config) -> EvalProtocol:
    """A run's evaluation protocol: its network, K = eval_models, eval_steps, bs_d, syn_aug, seed and backend.

    The learning rate, augmentation mode and the GPU levers keep EvalProtocol's defaults: the config's
    compile_steps and autocast are the distillation's.
    """
    return EvalProtocol(arch=cfg.arch, num_models=cfg.eval_models, steps=tuple(cfg.eval_steps),
                        bs_d=cfg.bs_d, augmentation=cfg.syn_aug, seed=cfg.seed,
                        backend=cfg.backend, width=cfg.width, depth=cfg.depth,
                        norm=cfg.norm, pool=cfg.pool)


def random_real_subset(
    x_train: Tensor,
    y_train: Tensor,
    k_per_class: int | None = None,
    pixel_budget_ipc: float | None = None,
    seed: int = 0,
    num_classes: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Random real images: k per class, or floor(ipc * classes) whole images spread round-robin.

    With a fractional budget the round-robin visits the classes in a seeded random order, so
    which classes get one image more varies with the seed. Returns (x, one-hot y), sorted by class.
    """
    if (k_per_class is None) == (pixel_budget_ipc is None):
        raise PoddError("give exactly one of k_per_class and pixel_budget_ipc")
    x_train = _check_images("x_train", x_train)
    c = _num_classes(y_train, num_classes)
    y_train = _check_int_labels("y_train", y_train, x_train.shape[0], c)
    g = torch.Generator().manual_seed(int(seed))
    if k_per_class is not None:
        if int(k_per_class) < 1:
            raise PoddError(f"k_per_class must be >= 1, got {k_per_class}")
        quota = torch.full((c,), int(k_per_class), dtype=torch.long)
    else:
        total = math.floor(float(pixel_budget_ipc) * c + 1e-9)
        if total < 1:
            raise PoddError(f"an IPC budget of {pixel_budget_ipc} buys no whole image "
                            f"for {c} classes")
        rank = torch.empty(c, dtype=torch.long)
        rank[torch.randperm(c, generator=g)] = torch.arange(c)
        quota = total // c + (rank < total % c).long()
    counts = torch.bincount(y_train.cpu(), minlength=c)
    if (counts < quota).any():
        bad = int(torch.nonzero(counts < quota)[0])
        raise PoddError(f"class {bad} has {int(counts[bad])} images, fewer than the "
                        f"{int(quota[bad])} requested")
    perm = torch.randperm(x_train.shape[0], generator=g)
    yp = y_train.cpu()[perm]
    order = torch.argsort(yp, stable=True)
    idx, ys = perm[order], yp[order]
    start = torch.cumsum(counts, 0) - counts
    keep = (torch.arange(idx.shape[0]) - start[ys]) < quota[ys]
    chosen = idx[keep].to(x_train.device)
    return x_train[chosen], F.one_hot(y_train[chosen], c).to(x_train.dtype)


def full_dataset_baseline(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    num_classes: int | None = None,
    arch: str = "convnet",
    num_models: int = 1,
    epochs: float = 30,
    steps: int | None = None,
    batch_size: int = 256,
    lr: float = 1e-3,
    augmentation: str = "flip_rotate",
    seed: int = 0,
    arch_kwargs: dict | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    aug_mode: str = "single",
    vectorize: bool | None = None,
    state_path: str | os.PathLike | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict:
    """The "Full dataset" row: the same network(s) trained by plain minibatch Adam on all of x_train.

    Each model shuffles the training set every epoch (its own permutation; the last partial batch
    is dropped). Length is `steps` if given, else ceil(epochs * steps_per_epoch). Tested once, at
    the end.
    """
    x_train = _check_images("x_train", x_train)
    x_test = _check_images("x_test", x_test)
    if x_test.shape[1:] != x_train.shape[1:]:
        raise PoddError(f"x_test images {tuple(x_test.shape[1:])} differ from x_train "
                        f"{tuple(x_train.shape[1:])}")
    c = _num_classes(y_train, num_classes)
    y_train = _check_int_labels("y_train", y_train, x_train.shape[0], c)
    y_test = _check_int_labels("y_test", y_test, x_test.shape[0], c)
    _check_common(batch_size, lr, num_models, augmentation, aug_mode)
    per_epoch = max(1, x_train.shape[0] // int(batch_size))
    total = int(steps) if steps is not None else math.ceil(float(epochs) * per_epoch)
    if total < 1:
        raise PoddError(f"training length must be >= 1 step (epochs={epochs}, steps={steps})")
    dev = _device(device)
    ch, h, w = x_train.shape[1:]
    model_fn = _model_fn(arch, ch, c, (h, w), arch_kwargs)
    y = F.one_hot(y_train, c).to(x_train.dtype)
    out = train_models(x_train, y, x_test, y_test, model_fn, int(num_models), (total,),
                        int(batch_size), float(lr), augmentation, aug_mode, int(seed), dev,
                        progress, vectorize, epochs_mode=True, desc=f"full {arch}",
                        return_params=False, state_path=state_path, on_step=on_step)
    protocol = {
        "arch": arch, "arch_kwargs": dict(arch_kwargs or {}), "num_models": int(num_models),
        "steps": total, "epochs": total / per_epoch, "steps_per_epoch": per_epoch,
        "batch_size": int(batch_size), "lr": float(lr),
        "optimizer": "Adam(betas=(0.9, 0.999), eps=1e-8), no weight decay, no schedule",
        "augmentation": augmentation, "aug_mode": aug_mode, "seed": int(seed),
        "n_train": int(x_train.shape[0]), "n_test": int(x_test.shape[0]), "num_classes": c,
        "std": STD_NOTE, "accuracy_unit": "percent",
    }
    return {"protocol": protocol, **out}


def save_eval(result: dict, path: str | os.PathLike) -> Path:
    """Write an evaluation result as JSON atomically (PoddError if it holds non-JSON values)."""
    try:
        json.dumps(result)
    except (TypeError, ValueError) as e:
        raise PoddError(f"evaluation result is not JSON-serialisable: {e}") from None
    return atomic_write_json(path, result)
