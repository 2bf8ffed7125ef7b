"""Export a distilled poster as a plain dataset: one .pt file, or an ImageFolder tree."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from .errors import PoddError
from .io import atomic_torch_save, atomic_write_json


def export_run(run: dict, fmt: str, dest: Path) -> Path:
    """Write run['x'] / run['y'] (patches, soft labels) as 'pt' or 'imagefolder'; return the path."""
    if fmt == "pt":
        path = dest if dest.suffix == ".pt" else dest / "distilled.pt"
        atomic_torch_save({"x": run["x"], "y": run["y"], "classes": run["classes"],
                           "preprocess": run["preprocess"], "note": "x is in the preprocessed (e.g. ZCA) space"}, path)
        return path
    if fmt != "imagefolder":
        raise PoddError(f"unknown export format {fmt!r}; use pt or imagefolder")
    from PIL import Image

    from .viz import poster_to_image

    prep = _preprocessor(run["preprocess"])
    posters = run["poster"] if run["poster"].dim() == 4 else run["poster"][None]  # per-class posters: (K, C, H, W)
    pictures = torch.stack([torch.as_tensor(poster_to_image(p, run["geometry"], prep)).permute(2, 0, 1)
                            for p in posters])
    from .poster import extract_patches

    picture = pictures if run["poster"].dim() == 4 else pictures[0]
    patches = (extract_patches(picture, run["geometry"]) * 255).round().clamp(0, 255).to(torch.uint8)
    labels = run["y"]
    # Write into a temporary folder beside dest, then swap it in: a stopped export leaves dest as it was.
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        soft = {}
        for k in range(patches.shape[0]):  # writing files one by one is inherent to an ImageFolder
            cls = run["classes"][int(labels[k].argmax())]
            path = tmp / cls / f"patch_{k:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            arr = patches[k].permute(1, 2, 0).numpy()
            Image.fromarray(arr if arr.shape[2] == 3 else arr[..., 0]).save(path)
            soft[f"{cls}/patch_{k:05d}.png"] = [round(float(v), 6) for v in labels[k]]
        atomic_write_json(tmp / "soft_labels.json", {"classes": run["classes"], "labels": soft})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    if old.exists():
        shutil.rmtree(old)
    return dest


def _preprocessor(state: dict | None):
    """Rebuild the data preprocessor from its saved state (None when absent)."""
    if not state:
        return None
    from .data import Preprocessor

    return Preprocessor.from_state_dict(state)
