"""Export a distilled poster as a plain dataset: one .pt file, or an ImageFolder tree."""

from __future__ import annotations

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

    img = poster_to_image(run["poster"], run["geometry"], _preprocessor(run["preprocess"]))  # (d_h, d_w, C)
    picture = torch.as_tensor(img).permute(2, 0, 1)
    from .poster import extract_patches

    patches = (extract_patches(picture, run["geometry"]) * 255).round().clamp(0, 255).to(torch.uint8)
    labels = run["y"]
    soft = {}
    for k in range(patches.shape[0]):  # writing files one by one is inherent to an ImageFolder
        cls = run["classes"][int(labels[k].argmax())]
        path = dest / cls / f"patch_{k:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = patches[k].permute(1, 2, 0).numpy()
        Image.fromarray(arr if arr.shape[2] == 3 else arr[..., 0]).save(path)
        soft[f"{cls}/patch_{k:05d}.png"] = [round(float(v), 6) for v in labels[k]]
    atomic_write_json(dest / "soft_labels.json", {"classes": run["classes"], "labels": soft})
    return dest


def _preprocessor(state: dict | None):
    """Rebuild the data preprocessor from its saved state (None when absent)."""
    if not state:
        return None
    from .data import Preprocessor

    return Preprocessor.from_state_dict(state)
