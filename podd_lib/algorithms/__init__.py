"""Distillation algorithms under the poster (Algorithm 1's input), and the registry that names them.

    base     -- what every algorithm shares: SyntheticSet, RealSampler, the outer step and its state
    ratbptt  -- RaT-BPTT (paper section 3), PoDD's algorithm
    mtt      -- trajectory matching, with its cached expert trajectories
    dm, dc   -- distribution and gradient matching, per class
    dream    -- DREAM's representative real batches (a RealSampler) and clustering initialisation

Every algorithm module has `from_config(cfg, model, s, real, device, progress)`, which builds the
algorithm from a resolved config; a new algorithm is one module and one entry in REGISTRY.
"""

from __future__ import annotations

from typing import Callable

from . import dc, dm, mtt, ratbptt
from .base import Algorithm

Builder = Callable[..., Algorithm]

REGISTRY: dict[str, Builder] = {
    "ratbptt": ratbptt.from_config,
    "mtt": mtt.from_config,
    "dm": dm.from_config,
    "dc": dc.from_config,
}
