"""The kit writes only into folders it owns: absent, empty, or marked as its own output of that kind.

Every run folder and export folder holds a marker file, MARKER, with {"kind": "run"} or
{"kind": "export", "format": ..., "run": ...}. A folder with other files and no matching marker
is the user's: commands refuse it in one line instead of writing there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

from .errors import PoddError
from .io import atomic_write_json

MARKER = ".podd-kit.json"
LOCK = ".podd-kit.lock"  # held by the one process writing a folder; it names that process
_HELD: dict[str, object] = {}  # lock files this process holds -> their FileLock (locks are re-entrant)


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
    """Names in folder, sorted (the kit's lock file is not content)."""
    return sorted(n for n in os.listdir(folder) if n != LOCK)


def check_name(name: object, what: str, source: Path | str) -> str:
    """A name that becomes one path component (a class folder): printable, no separator, not '.', '..' or hidden."""
    problem = None
    if not isinstance(name, str) or not name:
        problem = "is empty or not text"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif name.startswith("."):
        problem = "starts with a dot"
    elif not name.isprintable():
        problem = "holds a non-printable or undecodable character"
    if problem:
        raise PoddError(f"{source}: {what} {ascii(name)} {problem}; the kit does not turn it into a folder name")
    return name


def check_text(value: object, what: str, source: Path | str) -> str:
    """A text field read from a file (a dataset name): a printable string."""
    if not isinstance(value, str) or not value or not value.isprintable():
        raise PoddError(f"{source}: {what} {ascii(value)} is not printable text; the file is damaged or foreign")
    return value


def _lock_owner(lock_path: Path) -> str:
    """Who holds a lock, as its lock file says ('another podd process' when it says nothing)."""
    try:
        info = json.loads(lock_path.read_text())
        return f"podd process {info['pid']} on {info['host']} ({info['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another podd process"


def _command_line() -> str:
    """This process's command as a user would recognise it ('podd distill ...', else the program and its arguments)."""
    argv = sys.argv or ["python"]
    prog = "podd" if "podd" in argv[0] else Path(argv[0]).name
    return " ".join([prog, *argv[1:]])[:200]


def _acquire(lock_path: Path, shown: Path, flag: str):
    """The lock at lock_path, taken without waiting; held by another process: one line naming it and SHOWN."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise PoddError(f"{flag} {shown} is being written by {_lock_owner(lock_path)}; wait for it to finish "
                        f"or choose another {flag}") from None
    return lock


def _name_holder(lock_path: Path) -> None:
    """Write who holds a lock into its file (the lock is on the open file, not its contents)."""
    with open(lock_path, "w", encoding="utf-8") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "command": _command_line()[:200]}, f)


def _check_free(lock_path: Path, shown: Path, flag: str) -> None:
    """Fail in one line, naming the writer, when another process holds the lock at lock_path (nothing is changed)."""
    if str(lock_path) in _HELD or not lock_path.is_file():
        return
    try:
        lock = _acquire(lock_path, shown, flag)
    except OSError:  # a lock file we cannot open: the writable checks name the problem
        return
    lock.release()


def check_unlocked(folder: Path, flag: str = "--out") -> None:
    """Fail in one line, naming the writer, when another process holds the folder's lock (nothing is changed)."""
    _check_free(Path(folder).resolve() / LOCK, Path(folder), flag)


@contextlib.contextmanager
def _holding(lock_path: Path, shown: Path, flag: str, remove: bool) -> Iterator[bool]:
    """Hold lock_path while writing SHOWN (re-entrant in this process; yields whether this call took it).

    On release the lock file is emptied (it names only a process that holds it), or removed (remove).
    """
    key = str(lock_path)
    if key in _HELD:  # this process already writes it
        yield False
        return
    lock = _acquire(lock_path, shown, flag)
    try:
        _name_holder(lock_path)
        _HELD[key] = lock
        yield True
    finally:
        _HELD.pop(key, None)
        with contextlib.suppress(OSError):
            lock_path.unlink() if remove else open(lock_path, "w").close()
        lock.release()


@contextlib.contextmanager
def folder_lock(folder: Path, flag: str = "--out") -> Iterator[None]:
    """Hold FOLDER/.podd-kit.lock while writing the folder; a second writer fails in one line naming the first."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    took = False
    try:
        with _holding(folder.resolve() / LOCK, folder, flag, remove=False) as took:
            yield
    finally:
        if took and created and os.listdir(folder) == [LOCK]:  # nothing was written: leave no trace
            (folder / LOCK).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()


def output_lock_path(dest: Path) -> Path:
    """The lock of an output replaced whole (an export): .NAME.podd-kit.lock beside it, since the swap replaces DEST itself."""
    dest = Path(dest).resolve()
    return dest.parent / f".{dest.name}{LOCK}"


def check_output_unlocked(dest: Path, flag: str = "--dest") -> None:
    """Fail in one line, naming the writer, when another process is writing the output DEST (nothing is changed)."""
    _check_free(output_lock_path(dest), Path(dest), flag)


@contextlib.contextmanager
def output_lock(dest: Path, flag: str = "--dest") -> Iterator[None]:
    """Hold DEST's lock (output_lock_path) while DEST is built and swapped in; a second writer fails naming the first.

    The lock file is removed on release, so no trace is left beside DEST. A process that opened it
    just before the removal and locks it just after holds a lock nobody else sees; the window is a
    few instructions long, and each writer still swaps in a whole output (replace_folder).
    """
    lock_path = output_lock_path(dest)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with _holding(lock_path, Path(dest), flag, remove=True):
        yield


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


def check_own_json(path: Path, flag: str, keys: tuple[str, ...]) -> None:
    """An output JSON file must be new, or a file of the kit (a JSON object with these keys): never a user's file."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise PoddError(f"{flag} {path} is a symlink to {os.readlink(path)}, which does not exist; give another file")
    if not path.exists() or path.is_dir():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or not all(k in data for k in keys):
        raise PoddError(f"{flag} {path} exists and is not a file the kit wrote; the kit does not overwrite it: "
                        f"give a new file name")


def is_kit_run(folder: Path) -> bool:
    """A run folder of the kit: its marker says so (folders from before markers: config.json + checkpoint.pt)."""
    marker = read_marker(folder)
    if marker is not None:
        return marker.get("kind") == "run"
    return (folder / "config.json").is_file() and (folder / "checkpoint.pt").is_file()


def check_run_out(out: Path, resume: bool) -> None:
    """Before any data is read: --out must be new, empty, or a kit run (resume only with a checkpoint)."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise PoddError(f"--out {out} is a symlink to {os.readlink(out)}, which does not exist; "
                        f"create its target or give another --out")
    if out.exists() and not out.is_dir():
        raise PoddError(f"--out {out} is a file; give a folder for the run")
    check_unlocked(out)
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
    check_output_unlocked(Path(dest), "--dest")
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
        foreign = _foreign_files(dest_r, fmt)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise PoddError(f"--dest {dest} is an export of {run} but also holds files the kit did not write "
                            f"({shown}); move them out or give a new folder")


_PATCH = re.compile(r"patch_\d{5}\.png")


def _foreign_files(dest: Path, fmt: str) -> list[str]:
    """Paths under an export folder that the kit's export of that format does not write."""
    own_top = {MARKER, LOCK, "distilled.pt"} if fmt == "pt" else {MARKER, LOCK, "soft_labels.json"}
    foreign = []
    for name in sorted(os.listdir(dest)):
        path = dest / name
        if name in own_top and path.is_file() and not path.is_symlink():
            continue
        if fmt == "imagefolder" and path.is_dir() and not path.is_symlink():
            for sub in sorted(os.listdir(path)):
                if not (_PATCH.fullmatch(sub) and (path / sub).is_file() and not (path / sub).is_symlink()):
                    foreign.append(f"{name}/{sub}")
            continue
        foreign.append(name)
    return foreign


def _is_pt_export_of(path: Path, run: Path) -> bool:
    """True when path is a .pt file the kit exported from run."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception:  # any unreadable or unsafe file is simply not ours
        return False
    return isinstance(obj, dict) and obj.get("podd_export") == str(run)


def _pid_alive(pid: int) -> bool:
    """True while process pid exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but is not ours
        return True
    return True


def _remove_stale(dest: Path) -> None:
    """Remove the temporary folders replace_folder left beside dest when its process was killed."""
    pattern = re.compile(re.escape(f".{dest.name}.") + r"(tmp|old)-(\d+)")
    for path in dest.parent.iterdir():
        m = pattern.fullmatch(path.name)
        if m and path.is_dir() and not path.is_symlink() and not _pid_alive(int(m.group(2))):
            shutil.rmtree(path, ignore_errors=True)


def replace_folder(dest: Path, fill: Callable[[Path], None]) -> Path:
    """Build a folder with fill(tmp) beside dest, then swap it in; on any failure dest is as it was.

    An existing empty dest (for example the current folder) receives the entries one by one; a
    previous export is renamed aside, replaced, and removed; nothing temporary is left behind.
    """
    dest = Path(dest).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(dest)
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
                         "full_epochs", "data_root", "dataset_path",
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


def safe_torch_load(path: Path):
    """torch.load with weights_only=True: tensors, numbers, text, lists and dicts only; no code ever runs.

    A file that holds anything else is one line naming it (nothing of it is unpickled).
    """
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # a foreign pickle protocol warns before it is refused
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if re.search(r"GLOBAL|[Uu]nsupported|not an allowed global", str(e)):
            raise PoddError(f"{path} holds objects other than tensors and plain values; the kit does not load it "
                            f"(loading could run code from the file): re-create it or restore the kit's file") from None
        raise PoddError(f"{path} is damaged or not a PyTorch file (UnpicklingError); "
                        f"re-run the distillation or restore the file") from None
    except Exception as e:  # torch raises many types for damaged files
        raise PoddError(f"{path} is damaged or not a PyTorch file ({type(e).__name__}); "
                        f"re-run the distillation or restore the file") from None


def load_torch_file(path: Path, keys: tuple[str, ...] = ()) -> dict:
    """Safely load a run file (safe_torch_load); a truncated, empty, foreign or unsafe file is one line naming it."""
    obj = safe_torch_load(path)
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise PoddError(f"{path} is not a file the kit wrote (missing {', '.join(missing)})")
    return obj
