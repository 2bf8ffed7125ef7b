#!/usr/bin/env python3
"""Compare two results folders (outputs/<...>/results/*.json): the same tables, numbers within a tolerance.

    python scripts/compare_results.py DIR_A DIR_B [--tol 1e-6]

Columns that hold measured times (names matching --ignore, default 's / step|seconds|wall') are
left out: they differ from run to run. Prints one line per difference and exits 1 if there is any,
else prints a one-line summary and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path


def _same(a: object, b: object, tol: float) -> bool:
    """Equal, numbers within tol (NaN equals NaN), recursively through lists and dicts."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol * max(1.0, abs(a), abs(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], tol) for k in a)
    return a == b


def _without(obj: object, pattern: re.Pattern) -> object:
    """obj with every dict key matching pattern removed, recursively."""
    if isinstance(obj, list):
        return [_without(x, pattern) for x in obj]
    if isinstance(obj, dict):
        return {k: _without(v, pattern) for k, v in obj.items() if not pattern.search(str(k))}
    return obj


def main() -> int:
    """Compare the rows and tables of every results file present in either folder."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--ignore", default=r"s / step|seconds|wall", help="regex of column names left out")
    args = p.parse_args()
    ignore = re.compile(args.ignore)
    names = sorted({f.name for d in (args.a, args.b) for f in d.glob("*.json")})
    diffs = []
    for name in names:
        fa, fb = args.a / name, args.b / name
        if not fa.exists() or not fb.exists():
            diffs.append(f"{name}: only in {args.a if fa.exists() else args.b}")
            continue
        ra, rb = _without(json.loads(fa.read_text()), ignore), _without(json.loads(fb.read_text()), ignore)
        for key in ("rows", "tables", "columns", "notes", "commands"):
            if not _same(ra.get(key), rb.get(key), args.tol):
                diffs.append(f"{name}: {key} differ")
    for d in diffs:
        print(f"compare_results: {d}")
    if diffs or not names:
        print(f"compare_results: {len(diffs)} differences in {len(names)} results files", file=sys.stderr)
        return 1
    print(f"compare_results: {len(names)} results files, the same tables in {args.a} and {args.b}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
