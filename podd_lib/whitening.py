"""A run's ZCA whitening is the dataset's: poster.pt keeps a small reference, not the (d, d) matrix.

The eigenvectors of a 32x32 colour dataset are 3072 x 3072 float32 (37.7 MB), the same for every
run on that dataset, so a run records only the eigenvalues, the regulariser, the image shape and
a probe (the inverse whitening of fixed random images). Loading the run recomputes the whitening
from the dataset named in its config.json (the data root's .podd_cache keeps it, so this is a
file read) and checks it against the eigenvalues and the probe. Runs written with the whole
matrix still load as they are; a poster shared without its dataset is one line saying what it needs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import PoddError

if TYPE_CHECKING:
    from .config import Config

REFERENCE = "zca-reference"
PROBE_IMAGES = 2
TOLERANCE = 1e-3  # relative: a recomputation on another machine may differ in the last bits


def _probe(zca) -> torch.Tensor:
    """The inverse whitening of fixed random images: a fingerprint of the whole matrix."""
    x = torch.randn(PROBE_IMAGES, *zca.image_shape, generator=torch.Generator().manual_seed(0))
    return zca.inverse(x).to(torch.float32)


def reference(zca) -> dict:
    """What poster.pt keeps of a ZCA whitening: everything but the eigenvectors, plus a probe."""
    return {"kind": REFERENCE, "eigvals": zca.eigvals.clone(), "reg": zca.reg, "image_shape": list(zca.image_shape),
            "probe": _probe(zca)}


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a and b agree within TOLERANCE of b's scale."""
    a, b = a.double(), b.double()
    return a.shape == b.shape and float((a - b).abs().max()) <= TOLERANCE * max(float(b.abs().max()), 1e-12)


def _candidate_roots(data_root: str | os.PathLike | None, cfg: Config) -> list[str]:
    """Where to look for a run's dataset: the given root, the run's own, $PODD_DATA_ROOT, the kit's ./data."""
    kit_data = Path(__file__).resolve().parent.parent / "data"
    given = [data_root, cfg.data_root, os.environ.get("PODD_DATA_ROOT"), kit_data]
    return list(dict.fromkeys(str(r) for r in given if r))


def resolve(state: dict | None, cfg: Config, source: Path, data_root: str | os.PathLike | None = None) -> dict | None:
    """The full preprocessor state of a run: as stored, or its whitening recomputed from the run's dataset."""
    if not isinstance(state, dict) or state.get("kind") != REFERENCE:
        return state
    from .data import zca_for_config

    roots = _candidate_roots(data_root, cfg)
    zca, first_error = None, None
    for root in roots:
        try:
            zca = zca_for_config(cfg, root)
            break
        except PoddError as e:
            first_error = first_error or e
    if zca is None:
        raise PoddError(f"{source} keeps a reference to the ZCA whitening of {cfg.dataset}, which is "
                        f"recomputed from that dataset's training data; it is not available under "
                        f"{' or '.join(map(str, roots))} ({first_error}); give --data-root or set PODD_DATA_ROOT")
    if zca.reg != float(state["reg"]) or list(zca.image_shape) != list(state["image_shape"]) \
            or not _close(zca.eigvals, state["eigvals"]) or not _close(_probe(zca), state["probe"]):
        raise PoddError(f"{source}: the ZCA whitening recomputed from {cfg.dataset} under {root} is not the "
                        f"one the run was made with (has the data changed?)")
    return zca.state_dict()
