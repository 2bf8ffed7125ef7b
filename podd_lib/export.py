"""Export a distilled poster as a plain dataset: one .pt file, or an ImageFolder tree."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import PoddError
from .io import atomic_torch_save, atomic_write_json, torch_save_file
from .safety import check_export_dest, check_name, replace_folder, write_marker


def export_run(run: dict, fmt: str, dest: Path, run_dir: Path | None = None) -> Path:
    """Write run['x'] / run['y'] (patches, soft labels) as 'pt' or 'imagefolder'; return the path.

    dest must be new, empty, or a previous export of the same run in the same format
    (safety.check_export_dest); it is replaced atomically and marked as the kit's export.
    """
    if fmt not in ("pt", "imagefolder"):
        raise PoddError(f"unknown export format {fmt!r}; use pt or imagefolder")
    run_id = str(Path(run_dir).resolve()) if run_dir is not None else ""
    if run_dir is not None:
        check_export_dest(Path(run_dir), dest, fmt)
    payload = {"x": run["x"], "y": run["y"], "classes": run["classes"], "preprocess": run["preprocess"],
               "note": "x is in the preprocessed (e.g. ZCA) space", "podd_export": run_id}
    if fmt == "pt" and dest.suffix == ".pt":
        return atomic_torch_save(payload, dest)
    if fmt == "pt":
        def fill_pt(tmp: Path) -> None:
            torch_save_file(payload, tmp / "distilled.pt")
            write_marker(tmp, "export", format=fmt, run=run_id)
        return replace_folder(dest, fill_pt) / "distilled.pt"
    from PIL import Image

    from .viz import poster_to_image

    for name in run["classes"]:  # each becomes a folder under dest
        check_name(name, "class name", run_dir or "the run")
    prep = _preprocessor(run["preprocess"])
    posters = run["poster"] if run["poster"].dim() == 4 else run["poster"][None]  # per-class posters: (K, C, H, W)
    pictures = torch.stack([torch.as_tensor(poster_to_image(p, run["geometry"], prep)).permute(2, 0, 1)
                            for p in posters])
    from .poster import extract_patches

    picture = pictures if run["poster"].dim() == 4 else pictures[0]
    patches = (extract_patches(picture, run["geometry"]) * 255).round().clamp(0, 255).to(torch.uint8)
    labels = run["y"]

    def fill(tmp: Path) -> None:
        soft = {}
        for k in range(patches.shape[0]):  # writing files one by one is inherent to an ImageFolder
            cls = run["classes"][int(labels[k].argmax())]
            path = tmp / cls / f"patch_{k:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            arr = patches[k].permute(1, 2, 0).numpy()
            Image.fromarray(arr if arr.shape[2] == 3 else arr[..., 0]).save(path)
            soft[f"{cls}/patch_{k:05d}.png"] = [round(float(v), 6) for v in labels[k]]
        atomic_write_json(tmp / "soft_labels.json", {"classes": run["classes"], "labels": soft})
        write_marker(tmp, "export", format=fmt, run=run_id)

    return replace_folder(dest, fill)


def _preprocessor(state: dict | None):
    """Rebuild the data preprocessor from its saved state (None when absent)."""
    if not state:
        return None
    from .data import Preprocessor

    return Preprocessor.from_state_dict(state)
