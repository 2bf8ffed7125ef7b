"""The on-disk cache of decoded arrays and ZCA eigendecompositions: `<root>/.podd_cache/*.npz`, written atomically."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from podd_lib.io import atomic_numpy_savez
from podd_lib.data.sources import _Source

CACHE_DIRNAME = ".podd_cache"
CACHE_VERSION = 1


# ----------------------------------------------------------------------------- caching

def _cache_path(root: Path, name: str, kind: str, key: dict[str, Any]) -> Path:
    """<root>/.podd_cache/<safe name>-<kind>-<hash of key>.npz."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", name.split(":", 1)[-1] if ":" in name else name).strip("-")[-40:]
    prefix = f"imagefolder-{safe}" if name.startswith("imagefolder:") else safe
    return root / CACHE_DIRNAME / f"{prefix or 'data'}-{kind}-{digest}.npz"


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """Arrays of a cache file, or None when absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception:
        warnings.warn(f"ignoring unreadable cache file {path}")
        return None


def _write_cache(path: Path, **arrays: Any) -> None:
    """Write a cache file atomically; a read-only data root only costs a warning."""
    try:
        atomic_numpy_savez(path, **arrays)
    except OSError as exc:
        warnings.warn(f"could not write cache file {path}: {exc}")


def _raw_key(source: _Source, tpc: int | None, vpc: int | None) -> dict[str, Any]:
    """Cache identity of the decoded arrays."""
    return {"version": CACHE_VERSION, "name": source.name, "source": str(source.folder.resolve()),
            "fingerprint": source.fingerprint(), "train_per_class": tpc, "test_per_class": vpc,
            "image_size": list(source.size) if source.size else None}


