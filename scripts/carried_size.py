"""What a device call carries: the working tree plus the carried folders, against the transfer limit.

    python3 scripts/carried_size.py [--limit-mib 60] [FOLDER ...]      (default FOLDER: gpu_data)
    carried: working tree 3.8 MiB + gpu_data 35.1 MiB = 38.9 MiB (limit 60 MiB)

The working tree is what the device tool copies: git's tracked files and its untracked files that
are not ignored (without git, as on the device's copy: every file outside .git and __pycache__ and
outside the carried folders). Exits 1, in one line, when the total is over the limit.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

MIB = 2**20


def tree_files(root: Path, carried: list[Path]) -> list[Path]:
    """The working tree's files as the device tool copies them, less the carried folders (counted apart)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, check=True).stdout
        files = [root / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", "__pycache__"}
        files = [p for p in root.rglob("*") if not skip & set(p.relative_to(root).parts)
                 and (p.is_file() or p.is_symlink())]
    return [p for p in files if not any(p.is_relative_to(c) for c in carried)]


def size_of(files: list[Path]) -> int:
    """Bytes of the files (a link counts as itself; a file listed but deleted counts 0)."""
    return sum(p.lstat().st_size for p in files if p.is_symlink() or p.exists())


def folder_files(folder: Path) -> list[Path]:
    """Every file under a carried folder (none when it does not exist)."""
    return [p for p in folder.rglob("*") if p.is_file() or p.is_symlink()] if folder.is_dir() else []


def main(argv: list[str] | None = None) -> int:
    """Print the carried size; 1 when it is over the limit."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="*", default=["gpu_data"], help="carried folders (default gpu_data)")
    ap.add_argument("--limit-mib", type=float, default=60.0, help="the limit in MiB (default 60)")
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="the working tree")
    a = ap.parse_args(argv)
    root = Path(a.root).resolve()
    carried = [(root / f).resolve() for f in a.folders]
    tree = size_of(tree_files(root, carried))
    sizes = {f: size_of(folder_files(c)) for f, c in zip(a.folders, carried)}
    total = tree + sum(sizes.values())
    parts = " + ".join([f"working tree {tree / MIB:.1f} MiB"] + [f"{f} {s / MIB:.1f} MiB" for f, s in sizes.items()])
    print(f"carried: {parts} = {total / MIB:.1f} MiB (limit {a.limit_mib:g} MiB)")
    if total > a.limit_mib * MIB:
        print(f"carried_size: {total / MIB:.1f} MiB is over the {a.limit_mib:g} MiB limit; "
              f"make a smaller subset (scripts/make_gpu_subset.sh N_PER_CLASS)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
