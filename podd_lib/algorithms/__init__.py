"""Distillation algorithms under the poster (Algorithm 1's input), and the registry that names them.

    registry -- REGISTRY: each algorithm's name and its own settings (name, type, default, meaning)
    base     -- what every algorithm shares: SyntheticSet, RealSampler, the outer step and its state
    ratbptt  -- RaT-BPTT (paper section 3), PoDD's algorithm
    mtt      -- trajectory matching, with its cached expert trajectories
    dm, dc   -- distribution and gradient matching, per class
    dream    -- DREAM's representative real batches (a RealSampler) and clustering initialisation

Every algorithm module has `from_config(cfg, model, s, real, device, progress)`, which builds the
algorithm from a resolved config; a new algorithm is one module and one entry in REGISTRY
(registry.py), which declares its settings. Importing this package imports no algorithm module
(nor torch): `builder` imports the one a run needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

from ..errors import PoddError
from .registry import DREAM, REGISTRY, Setting

if TYPE_CHECKING:
    from .base import Algorithm

__all__ = ["DREAM", "REGISTRY", "Setting", "builder"]


def builder(name: str) -> Callable[..., Algorithm]:
    """A registered algorithm's from_config, from its module podd_lib/algorithms/<name>.py."""
    if name not in REGISTRY:
        raise PoddError(f"unknown algorithm {name!r}; choose one of {', '.join(REGISTRY)}")
    return importlib.import_module(f"{__name__}.{name}").from_config
