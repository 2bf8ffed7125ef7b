"""`python -m podd_lib.kit readme OUT_DIR README.md`: recompute README's claims table of OUT_DIR from OUT_DIR/results.

README holds one block per output folder (outputs for quick, outputs/cpu-long for cpu-long), each
opened by a marker that names its command.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..io import atomic_write_text
from .claims import update_readme
from .report import load_results


def main(argv: list[str]) -> int:
    """Rewrite the block between README's claims markers; one line and exit 2 on bad usage."""
    if len(argv) != 3 or argv[0] != "readme":
        print("usage: python -m podd_lib.kit readme OUT_DIR README.md", file=sys.stderr)
        return 2
    readme = Path(argv[2])
    try:
        out_dir = Path(argv[1]).as_posix().rstrip("/")
        text = update_readme(readme.read_text(encoding="utf-8"), load_results(argv[1]), out_dir)
    except (OSError, ValueError) as exc:
        print(f"podd_lib.kit: {exc}", file=sys.stderr)
        return 2
    atomic_write_text(readme, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
