"""One line from a GPU check's record: each part ok / failed / skipped, and the fidelity beside the paper's.

    python benchmarks/gpu_summary.py OUT/gpu_check.json
    gpu_check: environment ok, correctness ok, speed ok, fidelity ok | 16x6 52.10 ± 0.80 % @300 after 500 outer steps (paper 56.73) | 5x2 ...

Standard library only, so it also reads a record that a crashed or half-finished check left behind.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PARTS = ("environment", "correctness", "speed", "fidelity")


def part_status(name: str, part: dict | None) -> str:
    """'ok', 'failed' or 'skipped' for one part's record (None: the part did not run)."""
    if part is None or part.get("skipped"):
        return "skipped"
    if name == "correctness":
        return "ok" if part.get("all_ok") else "failed"
    if part.get("error"):
        return "failed"
    if name == "speed":
        rows = part.get("rows") or []
        broken = [r for r in rows if r.get("median_s") is None and not str(r.get("note", "")).startswith("skipped")]
        return "failed" if broken or not rows else "ok"
    if name == "fidelity":
        runs = part.get("runs") or []
        if any(r.get("error") for r in runs):
            return "failed"
        return "skipped" if all(r.get("skipped") for r in runs) else "ok"
    return "ok"


def fidelity_text(run: dict) -> str:
    """'16x6 52.10 ± 0.80 % @300 after 500 outer steps (paper 56.73)', or why there is no number."""
    paper = f"(paper {run.get('paper')})"
    if run.get("error") or run.get("skipped"):
        return f"{run.get('patches')} {'failed' if run.get('error') else 'skipped'} {paper}"
    evals = run.get("eval") or []
    if not evals:
        return f"{run.get('patches')} not evaluated {paper}"
    last = max(evals, key=lambda e: e["step"])
    return (f"{run['patches']} {last['mean_pct']:.2f} ± {last['std_pct']:.2f} % @{last['step']} "
            f"after {run.get('outer_steps')} outer steps {paper}")


def summary(res: dict | None) -> str:
    """The one line for a record (None: no record was written)."""
    res = res or {}
    parts = ", ".join(f"{p} {part_status(p, res.get(p))}" for p in PARTS)
    runs = (res.get("fidelity") or {}).get("runs") or []
    return " | ".join([f"gpu_check: {parts}"] + [fidelity_text(r) for r in runs]
                      + ([] if res else ["no gpu_check.json: the check did not start"]))


def main(argv: list[str]) -> int:
    """Print the summary line of the record named in argv[0]."""
    path = Path(argv[0]) if argv else Path("gpu_check_out/gpu_check.json")
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError):
        res = None
    print(summary(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
