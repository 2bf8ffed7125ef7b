"""`python -m podd_lib.kit readme OUT_DIR FILE`: recompute FILE's claims table of OUT_DIR from OUT_DIR/results.

`python -m podd_lib.kit probes`: one line, computed from benchmarks/probes.jsonl, on whether the
central claim shows at CPU scale, with the GPU command that tests it (run_all.sh prints it first).

README.md holds the default profile's block (outputs), docs/results.md the other profiles' (outputs/cpu-long);
each block opens with a marker that names its command.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..io import atomic_write_text
from .claims import cpu_scale_statement, read_probe_rows, update_readme
from .report import load_results


def main(argv: list[str]) -> int:
    """Rewrite the block between README's claims markers (or print the probes' verdict); exit 2 on bad usage."""
    if argv == ["probes"]:
        print(cpu_scale_statement(read_probe_rows()))
        return 0
    if len(argv) != 3 or argv[0] != "readme":
        print("usage: python -m podd_lib.kit readme OUT_DIR FILE | python -m podd_lib.kit probes", file=sys.stderr)
        return 2
    readme = Path(argv[2])
    try:
        out_dir = Path(argv[1]).as_posix().rstrip("/")
        text = update_readme(readme.read_text(encoding="utf-8"), load_results(argv[1]), out_dir, argv[2])
    except (OSError, ValueError) as exc:
        print(f"podd_lib.kit: {exc}", file=sys.stderr)
        return 2
    atomic_write_text(readme, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
