"""The algorithm registry: each distillation algorithm's name and the settings only it reads.

An algorithm is one module plus one entry here. The module, podd_lib/algorithms/<name>.py, has
`from_config(cfg, model, s, real, device, progress)`; its entry in REGISTRY names it and declares
its own settings, each with a name, a type (validate.py's annotated types), a default and a
one-line meaning. Everything else follows from this registry:

  - the config's choices of `algorithm` and the schema's fields for these settings (validate.py),
  - their defaults in every resolved config (config.algorithm_defaults, hence config.json),
  - the settings a config's algorithm never reads, left out of run keys (config.irrelevant_keys,
    kit.experiments.config_key), and settings left at their defaults, also left out,
  - the builder (podd_lib.algorithms.builder imports the module of that name).

The declarations sit here, beside the registry entry, and not in the algorithm's module because
the modules import torch at their top, and the config schema and `resolve_config` must stay
importable and usable without it (the CLI checks a config before it imports torch). This module
imports only the schema's types. DREAM is a way of sampling real batches, not an algorithm; its
settings are declared here too (DREAM), as every algorithm can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..validate import Count, NonNegative, Positive


@dataclass(frozen=True)
class Setting:
    """One setting of an algorithm: its config key, type (as in validate.py), default and meaning."""

    name: str
    type: Any
    default: Any
    meaning: str


# DM and DC draw their real batches the same way and share their one setting.
CLASS_MATCHING = (Setting("real_per_class", Count, 256, "real images per class per outer step"),)

# Algorithm name -> the settings only it reads. Values are each method's own for CIFAR-10 at 1 IPC.
REGISTRY: dict[str, tuple[Setting, ...]] = {
    "ratbptt": (  # PoDD's algorithm (paper section 3); where the paper's text and the release differ, the text's
        Setting("curriculum_draw", Literal["step", "epoch"], "step",
                "curriculum c ~ U[minwindow, totwindow - window]: drawn every step (text) or every epoch (release)"),
        Setting("real_batches", Literal["random", "epochs"], "random",
                "real batch: bs independent random images (text) or a walk over reshuffled epochs (release)"),
    ),
    "mtt": (  # Cazenavette et al. 2022, CIFAR-10, 1 IPC, ZCA: N = 50, M = 2, T+ = 2, lr_teacher = 0.01
        Setting("syn_steps", Count, 50, "N: student steps per distillation step"),
        Setting("expert_epochs", Count, 2, "M: expert epochs between start and target"),
        Setting("max_start_epoch", NonNegative, 2, "T+: the latest expert epoch a trajectory starts from"),
        Setting("syn_lr", Positive, 0.01, "alpha_0, the student's initial step size (learned)"),
        Setting("lr_lr", Positive, 1e-05, "outer Adam learning rate of alpha (MTT: SGD 1e-7; ours the shared Adam)"),
        Setting("n_experts", Count, 5, "expert trajectories (MTT trains 100; cached and extendable)"),
        Setting("lr_teacher", Positive, 0.01, "the experts' learning rate"),
        Setting("expert_bs", Count, 256, "the experts' batch size"),
        Setting("expert_aug", str, "dsa", "the experts' augmentation"),
        Setting("experts_root", str, "", "where experts are cached; empty: <out_dir>/experts next to the runs"),
    ),
    "dm": CLASS_MATCHING,
    "dc": CLASS_MATCHING,
}

# DREAM's representative real batches (sampling = "dream") and clustering initialisation (init = "dream").
DREAM = (
    Setting("dream_interval", Count, 10, "I_int: re-cluster every this many outer steps"),
    Setting("dream_pool", NonNegative, 0, "0: cluster the whole class (DREAM); > 0: a random subset of that size"),
    Setting("dream_iters", Count, 20, "Lloyd iterations per clustering"),
)


def declared_settings() -> dict[str, Setting]:
    """Every registered algorithm's and DREAM's settings by name, each once (DM and DC share theirs)."""
    out: dict[str, Setting] = {}
    for s in [s for settings in REGISTRY.values() for s in settings] + list(DREAM):
        if s.name in out and out[s.name] != s:
            raise ValueError(f"setting {s.name!r} is declared twice, differently: {out[s.name]} and {s}")
        out[s.name] = s
    return out


def setting_defaults() -> dict[str, Any]:
    """Each declared setting's default, by name."""
    return {name: s.default for name, s in declared_settings().items()}


def algorithm_keys() -> dict[str, tuple[str, ...]]:
    """The settings each algorithm reads, by algorithm name, and DREAM's under 'dream'."""
    return {**{name: tuple(s.name for s in settings) for name, settings in REGISTRY.items()},
            "dream": tuple(s.name for s in DREAM)}
