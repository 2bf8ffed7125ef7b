"""Export a distilled poster as a plain dataset: one .pt file, or an ImageFolder tree."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import PoddError
from .io import atomic_torch_save, atomic_write_json, torch_save_file
from .safety import check_export_dest, check_name, output_lock, replace_folder, write_marker


def export_run(run: dict, fmt: str, dest: Path, run_dir: Path | None = None) -> Path:
    """Write run['x'] / run['y'] (patches, soft labels) as 'pt' or 'imagefolder'; return the path.

    dest must be new, empty, or a previous export of the same run in the same format
    (safety.check_export_dest); it is replaced atomically and marked as the kit's export.
    """
    if fmt not in ("pt", "imagefolder"):
        raise PoddError(f"unknown export format {fmt!r}; use pt or imagefolder")
    with output_lock(dest, "--dest"):
        return _export_locked(run, fmt, Path(dest), run_dir)


def _export_locked(run: dict, fmt: str, dest: Path, run_dir: Path | None) -> Path:
    """export_run while this process holds dest's lock."""
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


# ----------------------------------------------------------------------------- a poster as a dataset


def load_tensors(path: Path) -> dict:
    """torch.load a kit file holding tensors and plain containers only (weights_only: no code runs)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged or foreign files
        raise PoddError(f"{path} is damaged or not a tensor file the kit wrote ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise PoddError(f"{path} is not a file the kit wrote (no dictionary inside)")
    return obj


def _need(obj: dict, path: Path, keys: tuple[str, ...]) -> dict:
    """obj, or PoddError naming the keys path lacks."""
    missing = [k for k in keys if k not in obj]
    if missing:
        raise PoddError(f"{path} is not a file the kit wrote (missing {', '.join(missing)})")
    return obj


def poster_tensors(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(patches, soft labels, class names) of a run folder, a `podd export --format pt` folder or its .pt file."""
    from .poster import PosterGeometry, extract_patches

    p = Path(path)
    if p.is_dir() and (p / "poster.pt").exists():
        if not (p / "labels.pt").exists():
            raise PoddError(f"{p} is not a finished run: labels.pt is missing")
        poster = _need(load_tensors(p / "poster.pt"), p / "poster.pt", ("poster", "geometry", "classes"))
        labels = _need(load_tensors(p / "labels.pt"), p / "labels.pt", ("patch_labels",))
        geom = PosterGeometry(**{k: poster["geometry"][k] for k in PosterGeometry.__dataclass_fields__})
        with torch.no_grad():
            x = extract_patches(poster["poster"], geom)
        return x, labels["patch_labels"], list(poster["classes"])
    if p.is_dir() and (p / "distilled.pt").exists():
        p = p / "distilled.pt"
    if not p.is_file():
        raise PoddError(f"{path} is neither a run folder, an exported folder nor an exported .pt file")
    data = _need(load_tensors(p), p, ("x", "y", "classes"))
    return data["x"], data["y"], list(data["classes"])


class PosterDataset(torch.utils.data.Dataset):
    """The patches of a poster with their soft labels: item k is (transform(patch k), label vector k)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, classes: list[str], transform=None):
        if x.dim() != 4 or y.dim() != 2 or x.shape[0] != y.shape[0] or y.shape[1] != len(classes):
            raise PoddError(f"patches {tuple(x.shape)} and labels {tuple(y.shape)} do not match "
                            f"({len(classes)} classes)")
        self.x, self.y = x.detach().float(), y.detach().float()  # the labels exactly as the kit trains on them
        self.classes, self.transform = classes, transform

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[k]
        return (self.transform(x) if self.transform is not None else x), self.y[k]


def poster_dataset(path: str | Path, transform=None) -> PosterDataset:
    """A torch Dataset of (patch, soft label) from a run folder or an exported .pt file (or its folder).

    Patches are (C, H, W) float tensors in the run's preprocessed space (ZCA-whitened where the run
    used ZCA), as the kit trains on them; labels are the kit's soft labels over `dataset.classes`
    (L1-normalised: each sums to 1).
    `transform` (optional) is applied to each patch tensor, e.g. a torchvision v2 transform.
    """
    return PosterDataset(*poster_tensors(path), transform=transform)
