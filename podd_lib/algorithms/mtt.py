"""Trajectory matching (MTT, Cazenavette et al. 2022; the seminar deck's Algorithm 1) on poster patches.

Experts: networks trained on the real data (ZCA, augmentation, SGD at lr_teacher), their
parameters saved after every epoch: tau* = {theta*_t}, t = 0..T with T = T+ + M. They are cached
on disk, one file per expert, and reused by every distillation with the same expert settings.

One distillation step:
    tau* ~ experts;  t ~ U{0..T+};  theta_hat_t := theta*_t
    N times: b ~ D_syn;  theta_hat <- theta_hat - alpha grad l(A(b); theta_hat)     (alpha is learned)
    L = ||theta_hat_{t+N} - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2
and the poster, Y and alpha follow the gradient of L. Patches train on their soft labels.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..augment import augment
from ..errors import PoddError
from ..io import atomic_torch_save
from .base import RealSampler, SyntheticSet, reinit_params, soft_cross_entropy

if TYPE_CHECKING:
    from ..config import Config


def flatten_params(params: dict[str, Tensor]) -> Tensor:
    """All parameters as one vector, in dict order."""
    return torch.cat([p.reshape(-1) for p in params.values()])


def unflatten_params(flat: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of flatten_params for parameters shaped like `like`."""
    total = sum(p.numel() for p in like.values())
    if total != flat.numel():
        raise PoddError(f"expert vector has {flat.numel()} values but the network has {total} parameters")
    out, i = {}, 0
    for k, p in like.items():
        out[k] = flat[i : i + p.numel()].view_as(p)
        i += p.numel()
    return out


def mtt_loss(student: Tensor, start: Tensor, target: Tensor) -> Tensor:
    """||student - target||^2 / ||start - target||^2: 0 at the expert's end point, 1 at its start."""
    return ((student - target) ** 2).sum() / ((start - target) ** 2).sum().clamp_min(1e-12)


# ----------------------------------------------------------------------------- experts


@dataclass(frozen=True)
class ExpertSettings:
    """How experts are trained (MTT's buffer: SGD lr 0.01, no momentum or decay, batch 256, DSA)."""

    n_experts: int = 5
    epochs: int = 4  # T = max_start_epoch + expert_epochs
    lr_teacher: float = 0.01
    bs: int = 256
    aug: str = "dsa"
    seed: int = 0


def train_expert(model: nn.Module, x: Tensor, y: Tensor, es: ExpertSettings, index: int, progress: bool = False
                 ) -> Tensor:
    """One expert trajectory: (epochs + 1, n_params), parameters at init and after every epoch."""
    gen = torch.Generator(device=x.device)
    gen.manual_seed(es.seed * 1000 + index)
    params = reinit_params(model, gen)
    traj = [flatten_params(params).detach().cpu()]
    from tqdm.auto import tqdm

    bar = tqdm(total=es.epochs, desc=f"expert {index}", disable=not progress or bool(os.environ.get("CI")))
    for _ in range(es.epochs):
        perm = torch.randperm(x.shape[0], generator=gen, device=gen.device).to(x.device)
        for b in range(0, x.shape[0], es.bs):
            idx = perm[b : b + es.bs]
            xb = augment(x[idx], es.aug, gen)
            loss = F.cross_entropy(functional_call(model, params, (xb,)), y[idx])
            grads = torch.autograd.grad(loss, list(params.values()))
            with torch.no_grad():
                params = {k: (p - es.lr_teacher * g).requires_grad_(True) for (k, p), g in zip(params.items(), grads)}
        if not torch.isfinite(loss):
            raise PoddError(f"expert {index} diverged (loss {float(loss)}); lower lr_teacher")
        traj.append(flatten_params(params).detach().cpu())
        bar.update(1)
    bar.close()
    return torch.stack(traj)


def expert_key(cfg: Config, es: ExpertSettings) -> str:
    """A short hash of everything that changes an expert: data, network and training settings."""
    keys = ("dataset", "arch", "width", "depth", "norm", "pool", "zca", "zca_reg", "train_per_class")
    stable = {**{k: getattr(cfg, k) for k in keys}, **es.__dict__}
    stable.pop("n_experts")  # more experts extend the same set
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:12]


def experts_dir(cfg: Config, es: ExpertSettings, root: str | os.PathLike) -> Path:
    """<root>/<dataset>-<key>: where a config's experts live."""
    name = cfg.dataset.replace(":", "_").replace("/", "_")
    return Path(root) / f"{name}-{expert_key(cfg, es)}"


def load_or_train_experts(model: nn.Module, x: Tensor, y: Tensor, es: ExpertSettings, folder: str | os.PathLike,
                          progress: bool = False) -> Tensor:
    """(n_experts, epochs + 1, n_params): experts from folder, training (and saving) the missing ones.

    Each expert is trained under a file lock (expert_NNN.pt.lock), so runs started together (an
    executor's jobs) that need the same experts train each one once; the others wait and load it.
    """
    from filelock import FileLock

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trajs = []
    for i in range(es.n_experts):
        path = folder / f"expert_{i:03d}.pt"
        with FileLock(str(path) + ".lock"):
            if path.exists():
                t = torch.load(path, map_location="cpu", weights_only=True)
                if t.shape[0] != es.epochs + 1:
                    raise PoddError(f"{path} has {t.shape[0] - 1} epochs, expected {es.epochs}; "
                                    "remove it or use another folder")
            else:
                t = train_expert(model, x, y, es, i, progress)
                atomic_torch_save(t, path)
        trajs.append(t)
    return torch.stack(trajs)


# ----------------------------------------------------------------------------- distillation


@dataclass
class MTTSettings:
    """MTT's knobs (CIFAR-10, 1 IPC: N = 50, M = 2 epochs, T+ = 2, alpha_0 = lr_teacher)."""

    syn_steps: int = 50  # N
    expert_epochs: int = 2  # M, in epochs
    max_start_epoch: int = 2  # T+
    syn_lr: float = 0.01  # alpha_0
    lr_lr: float = 1e-5  # outer Adam learning rate of alpha
    bs_d: int = 96
    aug: str = "flip_rotate"

    def __post_init__(self) -> None:
        """Reject settings with no student steps or no expert segment."""
        if self.syn_steps < 1 or self.expert_epochs < 1 or self.max_start_epoch < 0 or self.syn_lr <= 0:
            raise PoddError(f"MTT needs syn_steps >= 1, expert_epochs >= 1, max_start_epoch >= 0 and syn_lr > 0, "
                            f"got {self.syn_steps}, {self.expert_epochs}, {self.max_start_epoch}, {self.syn_lr}")


class TrajectoryMatching:
    """MTT as a distillation algorithm over a SyntheticSet; alpha (the student step size) is learned."""

    name = "mtt"

    def __init__(self, model: nn.Module, s: MTTSettings, experts: Tensor):
        need = s.max_start_epoch + s.expert_epochs + 1
        if experts.dim() != 3 or experts.shape[1] < need:
            raise PoddError(f"MTT needs expert trajectories of at least {need - 1} epochs "
                            f"(max_start_epoch + expert_epochs), got shape {tuple(experts.shape)}")
        self.model, self.s, self.experts = model, s, experts
        self.like = {k: p.detach() for k, p in model.named_parameters()}
        self.alpha = torch.tensor(float(s.syn_lr), device=next(model.parameters()).device, requires_grad=True)

    def extra_leaves(self) -> list[tuple[str, Tensor, float]]:
        """The learnable student step size alpha."""
        return [("syn_lr", self.alpha, self.s.lr_lr)]

    def meta_loss(self, syn: SyntheticSet, real: RealSampler, gen: torch.Generator, step: int) -> tuple[Tensor, dict]:
        """Start at a random expert epoch, N student steps on patches, normalised distance to epoch t + M."""
        s = self.s
        e = int(torch.randint(self.experts.shape[0], (1,), generator=gen, device=gen.device))
        t = int(torch.randint(s.max_start_epoch + 1, (1,), generator=gen, device=gen.device))
        dev = self.alpha.device
        start = self.experts[e, t].to(dev)
        target = self.experts[e, t + s.expert_epochs].to(dev)
        flat = start.clone().requires_grad_(True)
        for _ in range(s.syn_steps):
            x, y = syn.sample(s.bs_d, gen)
            x = augment(x, s.aug, gen)
            loss = soft_cross_entropy(functional_call(self.model, unflatten_params(flat, self.like), (x,)), y)
            (g,) = torch.autograd.grad(loss, flat, create_graph=True)
            flat = flat - self.alpha * g
        return mtt_loss(flat, start, target), {"start_epoch": t, "expert": e, "syn_lr": float(self.alpha.detach())}


def experts_root(cfg: Config) -> str:
    """Where MTT's experts are cached: cfg experts_root, else $PODD_EXPERTS, else ./outputs/experts."""
    return cfg.experts_root or os.environ.get("PODD_EXPERTS") or "outputs/experts"


def expert_settings(cfg: Config) -> ExpertSettings:
    """MTT's expert-training settings from a config (T = max_start_epoch + expert_epochs epochs)."""
    return ExpertSettings(cfg.n_experts, cfg.max_start_epoch + cfg.expert_epochs, cfg.lr_teacher,
                          cfg.expert_bs, cfg.expert_aug, int(cfg.seed))


def from_config(cfg: Config, model: nn.Module, s, real=None, device: str = "cpu",
                progress: bool = False) -> TrajectoryMatching:
    """MTT with the config's settings; loads its experts, or trains them on the real data."""
    ms = MTTSettings(cfg.syn_steps, cfg.expert_epochs, cfg.max_start_epoch, cfg.syn_lr, cfg.lr_lr,
                     s.bs_d, s.syn_aug)
    if real is None:
        raise PoddError("MTT needs the real data to load or train its experts")
    es = expert_settings(cfg)
    folder = experts_dir(cfg, es, experts_root(cfg))
    experts = load_or_train_experts(model, real.x_train.to(device), real.y_train.to(device), es, folder, progress)
    return TrajectoryMatching(model, ms, experts)
