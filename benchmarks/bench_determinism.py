"""The cost of bitwise determinism: outer steps of three variants, alternated step by step in one process.

    python benchmarks/bench_determinism.py [--rounds 6] [--threads 2]

before: the patch gather by advanced indexing (its backward adds with atomics) and PyTorch's
default flags; after: the `index_select` gather and `deterministic_mode` (as `podd distill` runs);
after_nodet: the `index_select` gather with PyTorch's default flags (`--set deterministic=false`).
Quick-profile sizes: width 32, window 5, real batch 256, a fixed curriculum of 10 plain steps.
Alternating within one process pairs each variant's step with its neighbours' under the same
machine load; prints each variant's median and the median of the per-round ratios to before.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import podd_lib.poster as P  # noqa: E402
from podd_lib.determinism import deterministic_mode  # noqa: E402
from benchmarks.bench_distill import _cpu_bench_problem  # noqa: E402
from podd_lib.algorithms.ratbptt import outer_step  # noqa: E402

new = P.extract_windows


def old(grid, oy, ox, h, w):
    """The gather as it was: advanced indexing, whose backward is index_put_ with accumulate (atomics)."""
    rows = oy[:, None] + torch.arange(h, device=grid.device)
    cols = ox[:, None] + torch.arange(w, device=grid.device)
    return grid[:, rows[:, :, None], cols[:, None, :]].transpose(0, 1)


def step_seconds(fn, det: bool, st, pb, x, y) -> float:
    """Seconds of one outer step with gather fn, in deterministic mode or not."""
    P.extract_windows = fn
    with deterministic_mode(det):
        t = time.perf_counter()
        outer_step(st, pb.model, pb.labels, pb.geom, x, y, pb.settings)
        return time.perf_counter() - t


def main() -> None:
    """Alternate the three variants round by round; print medians and per-round ratios as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _, pb, st, x, y = _cpu_bench_problem("cpu-bench", "cpu", {"width": 32, "window": 5, "totwindow": 20, "bs": 256})
    variants = {"before": (old, False), "after": (new, True), "after_nodet": (new, False)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds + 1):  # round 0: warm-up
        for k, (fn, det) in variants.items():
            dt = step_seconds(fn, det, st, pb, x, y)
            if r > 0:
                times[k].append(dt)
    row = {k: {"median_s": round(statistics.median(v), 3), "all_s": [round(t, 2) for t in v]} for k, v in times.items()}
    for k in ("after", "after_nodet"):
        row[f"{k}_over_before"] = round(statistics.median(a / b for a, b in zip(times[k], times["before"])), 3)
    print(json.dumps({"threads": args.threads, "rounds": args.rounds, **row}))


if __name__ == "__main__":
    main()
