"""The kit writes only into folders it owns: absent, empty, or marked as its own output of that kind.

Every run folder and export folder holds a marker file, MARKER, with {"kind": "run"} or
{"kind": "export", "format": ..., "run": ...}. A folder with other files and no matching marker
is the user's: commands refuse it in one line instead of writing there.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from .errors import PoddError
from .io import atomic_write_json

MARKER = ".podd-kit.json"


def read_marker(folder: Path) -> dict | None:
    """The marker of a folder, or None when it has none (or an unreadable one)."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(folder: Path, kind: str, **info: str) -> None:
    """Mark folder as the kit's output of this kind (atomic)."""
    atomic_write_json(folder / MARKER, {"kind": kind, **info})


def _listing(folder: Path) -> list[str]:
    """Names in folder, sorted."""
    return sorted(os.listdir(folder))


def _check_writable(path: Path, flag: str) -> None:
    """The nearest existing ancestor of path must be a folder we can write into."""
    probe = path if path.is_dir() else path.parent
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise PoddError(f"{flag} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PoddError(f"{flag} {path}: cannot write in {probe} (permission denied)")


def is_kit_run(folder: Path) -> bool:
    """A run folder of the kit: its marker says so (folders from before markers: config.json + checkpoint.pt)."""
    marker = read_marker(folder)
    if marker is not None:
        return marker.get("kind") == "run"
    return (folder / "config.json").is_file() and (folder / "checkpoint.pt").is_file()


def check_run_out(out: Path, resume: bool) -> None:
    """Before any data is read: --out must be new, empty, or a kit run (resume only with a checkpoint)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PoddError(f"--out {out} is a file; give a folder for the run")
    _check_writable(out, "--out")
    names = _listing(out) if out.is_dir() else []
    has_ck = (out / "checkpoint.pt").is_file()
    if names and not is_kit_run(out):
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise PoddError(f"--out {out} holds files the kit did not write ({shown}); choose a new or empty folder")
    if has_ck and not resume:
        raise PoddError(f"{out} already holds a run; pass --resume to continue it or choose a new --out")
    if resume and not has_ck:
        raise PoddError(f"nothing to resume: {out} has no checkpoint.pt; drop --resume to start a new run")


def start_run(out: Path) -> None:
    """Create the run folder and mark it as the kit's."""
    out.mkdir(parents=True, exist_ok=True)
    if read_marker(out) is None:
        write_marker(out, "run")


def default_export_dest(run: Path, fmt: str) -> Path:
    """RUN/export for pt (RUN/export/distilled.pt), RUN/export-imagefolder for an ImageFolder tree."""
    return run / "export" if fmt == "pt" else run / f"export-{fmt}"


def check_export_dest(run: Path, dest: Path, fmt: str) -> None:
    """Refuse destinations that are not new, empty, or a previous export of this run in this format."""
    run_r, dest_r = Path(run).resolve(), Path(dest).resolve()
    if dest_r == run_r or dest_r in run_r.parents:
        raise PoddError(f"--dest {dest} would replace the run folder {run}; give a new folder")
    if fmt == "pt" and dest_r.suffix == ".pt":
        if dest_r.is_dir():
            raise PoddError(f"--dest {dest} is a folder; give a new .pt file name or a folder without the .pt suffix")
        _check_writable(dest_r, "--dest")
        if dest_r.exists() and not _is_pt_export_of(dest_r, run_r):
            raise PoddError(f"--dest {dest} exists and is not an export of {run}; the kit does not overwrite it")
        return
    if dest_r.exists() and not dest_r.is_dir():
        raise PoddError(f"--dest {dest} is a file; give a folder for the export")
    _check_writable(dest_r, "--dest")
    if dest_r.is_dir() and _listing(dest_r):
        marker = read_marker(dest_r)
        if not marker or marker.get("kind") != "export" or marker.get("run") != str(run_r):
            raise PoddError(f"--dest {dest} holds files that are not an export of {run}; give a new or empty folder")
        if marker.get("format") != fmt:
            raise PoddError(f"--dest {dest} holds a {marker.get('format')} export of this run; give another folder")


def _is_pt_export_of(path: Path, run: Path) -> bool:
    """True when path is a .pt file the kit exported from run."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # any unreadable file is simply not ours
        return False
    return isinstance(obj, dict) and obj.get("podd_export") == str(run)


def replace_folder(dest: Path, fill: Callable[[Path], None]) -> Path:
    """Build a folder with fill(tmp) beside dest, then swap it in; on any failure dest is as it was.

    An existing empty dest (for example the current folder) receives the entries one by one; a
    previous export is renamed aside, replaced, and removed; nothing temporary is left behind.
    """
    dest = Path(dest).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        fill(tmp)
        if dest.is_dir() and not _listing(dest):
            moved = []
            try:
                for name in _listing(tmp):
                    os.replace(tmp / name, dest / name)
                    moved.append(name)
            except BaseException:
                for name in moved:
                    p = dest / name
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
                raise
        elif dest.exists():
            os.replace(dest, old)
            try:
                os.replace(tmp, dest)
            except BaseException:
                os.replace(old, dest)
                raise
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return dest


# Settings that may change when a run is resumed: speed and bookkeeping (same maths), the step
# count (it may grow), evaluation settings and where the data lives. A change is recorded in
# config.json under "resumes" with the step where it took effect; any other difference refuses.
RESUME_FREE = frozenset({"steps", "checkpoint_every", "device", "progress", "backend", "compile_steps", "real_chunk",
                         "channels_last", "fused_blocks", "cpu_kernels", "deterministic", "eval_models", "eval_steps",
                         "full_epochs", "data_root",
                         "experts_root", "profile_overrides", "user_overrides"})
RECORDED = frozenset({"order_grid", "geometry", "resumes"})
FROM_DATA = frozenset({"n_classes", "image_size", "class_grid", "patch_grid"})


def resume_changes(old: dict, new: dict, before_data: bool = False) -> dict:
    """{key: [old, new]} for allowed changes; raise one line when a result-changing setting differs.

    before_data: skip the keys an ImageFolder run only learns from its data.
    """
    from .config import algorithm_defaults

    old = {**algorithm_defaults(), **old}  # a run made before a setting existed ran that setting's default
    skip = RECORDED | (FROM_DATA if before_data else frozenset())
    keys = [k for k in dict.fromkeys([*old, *new]) if k not in skip]
    diff = {k: [old.get(k), new.get(k)] for k in keys if old.get(k) != new.get(k)}
    refused = [k for k in diff if k not in RESUME_FREE]
    if refused:
        shown = ", ".join(f"{k} ({diff[k][0]!r} -> {diff[k][1]!r})" for k in refused[:4])
        raise PoddError(f"cannot resume: the run was made with different {shown}; use the run's settings or a new --out")
    return {k: v for k, v in diff.items() if k not in ("profile_overrides", "user_overrides")}


def read_run_config(path: Path) -> dict:
    """config.json of a run; a broken file is one line naming it."""
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise PoddError(f"{path} is not readable JSON ({type(e).__name__}); the run's record is damaged") from None
    if not isinstance(cfg, dict):
        raise PoddError(f"{path} is not a run config (expected a JSON object)")
    return cfg


def load_torch_file(path: Path, keys: tuple[str, ...] = ()) -> dict:
    """torch.load a run file; a truncated, empty or foreign file is one line naming it."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for damaged files
        raise PoddError(f"{path} is damaged or not a PyTorch file ({type(e).__name__}); "
                        f"re-run the distillation or restore the file") from None
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise PoddError(f"{path} is not a file the kit wrote (missing {', '.join(missing)})")
    return obj
