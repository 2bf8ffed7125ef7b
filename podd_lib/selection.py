"""Which poster a run keeps (`keep`): the last one, or, as the authors' release does, the best on the training set.

With keep = "best_train", every `keep_every` outer steps (and after the last) the poster is scored:
`eval_models` fresh networks are trained on its patches exactly as the evaluation protocol trains
them, tested on the real TRAINING set at each of `eval_steps`, and the score is the best mean
accuracy over those steps (the release's `test_acc[2]` and its argmax). The poster with the highest
score is kept in the run folder as kept.pt and becomes the run's poster.pt when the run ends. A
later poster replaces it only with a strictly higher score, so a resumed run keeps the same one. The
test set is never looked at. Scoring draws from the evaluation's own generators and restores the
global random state, so the distillation itself is the same with either setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .io import atomic_torch_save
from .poddl import PosterLabels
from .poster import PosterGeometry, extract_patches
from .safety import load_torch_file

if TYPE_CHECKING:
    from .config import Config

KEPT = "kept.pt"


def due(cfg: Config, step: int) -> bool:
    """Whether the poster is scored after this outer step."""
    return cfg.keep == "best_train" and (step % cfg.keep_every == 0 or step == cfg.steps)


def distilled_set(poster: Tensor, Y: Tensor | None, geom: PosterGeometry, labels: PosterLabels) -> tuple[Tensor, Tensor]:
    """The training set a poster stands for: its patches and their labels, detached, on the CPU."""
    with torch.no_grad():
        y = labels(Y)  # fixed labels ignore Y
        return extract_patches(poster.detach(), geom).cpu(), y.detach().cpu()


def training_set_score(cfg: Config, x: Tensor, y: Tensor, real, device: str = "cpu") -> dict:
    """{"score", "by_step"}: networks trained on (x, y) as the protocol trains them, tested on the training set."""
    from .evaluate import protocol_from_config, train_and_test

    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        out = train_and_test(x, y, real.x_train, real.y_train, protocol_from_config(cfg), device=dev, progress=False)
    by_step = [{"step": r["step"], "train_acc_pct": r["mean_pct"]} for r in out["by_step"]]
    return {"score": max(r["train_acc_pct"] for r in by_step), "by_step": by_step}


def consider(out: Path, step: int, poster: Tensor, Y: Tensor | None, score: dict) -> bool:
    """Make this poster the kept one (out/kept.pt, atomically) if its score beats the kept one's; True if it did."""
    path = Path(out) / KEPT
    if path.exists() and load_torch_file(path, ("score",))["score"] >= score["score"]:
        return False
    atomic_torch_save({"step": step, **score, "poster": poster.detach().cpu(),
                       "Y": None if Y is None else Y.detach().cpu()}, path)
    return True


def kept(out: Path) -> dict:
    """The kept poster of a run folder: {"step", "score", "by_step", "poster", "Y"}."""
    return load_torch_file(Path(out) / KEPT, ("step", "score", "by_step", "poster", "Y"))
