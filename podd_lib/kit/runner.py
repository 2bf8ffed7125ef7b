"""run_all.sh's first half: print the plan, then compute its missing runs through an executor.

    python -m podd_lib.kit.runner --profile smoke [--only 02,03] [--plan] [--executor submitit-local --jobs 2]

Exit status: 0 when every run is cached or done, 1 when some run failed (the others still ran),
2 on bad input (one line, before any data is read). The plan is written to <out_dir>/plan.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..config import PROFILES
from ..errors import PoddError
from ..io import atomic_write_json
from . import jobs, plan


def build_parser() -> argparse.ArgumentParser:
    """The runner's flags (run_all.sh passes its own through)."""
    p = argparse.ArgumentParser(prog="run_all", description="Plan the notebooks' runs and compute the missing ones.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--profile", default="quick", choices=PROFILES)
    p.add_argument("--only", default=None, help="notebook names or numbers, comma-separated (default: all)")
    p.add_argument("--datasets", default=None, help="comma-separated datasets (default: each notebook's)")
    p.add_argument("--plan", action="store_true", help="print and write the plan, compute nothing")
    p.add_argument("--executor", default="local", choices=jobs.EXECUTORS)
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (submitit-local)")
    p.add_argument("--force", action="store_true", help="recompute every planned run")
    p.add_argument("--notebooks", default="notebooks", help="the notebooks folder")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seconds-per-step", type=float, default=None,
                   help="estimate with this many seconds per outer step (e.g. measured on your GPU)")
    p.add_argument("--slurm-config", default=None, help="TOML file with a [slurm] table (see slurm.example.toml)")
    p.add_argument("--partition", default=None)
    p.add_argument("--gpus-per-run", type=int, default=None)
    p.add_argument("--time-min", type=int, default=None, help="SLURM time limit per job, minutes")
    p.add_argument("--array-parallelism", type=int, default=None)
    p.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE", help="extra sbatch option")
    return p


def _sbatch(pairs: list[str]) -> dict | None:
    """--sbatch KEY=VALUE flags as a dict (None when there are none)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise PoddError(f"--sbatch needs KEY=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k.strip().lstrip("-")] = v
    return out or None


def main(argv: list[str] | None = None) -> int:
    """Plan, print, compute; the exit status says whether every run is there."""
    args = build_parser().parse_args(argv)
    try:
        if args.jobs < 1:
            raise PoddError(f"--jobs must be at least 1, got {args.jobs}")
        if args.seconds_per_step is not None and args.seconds_per_step <= 0:
            raise PoddError(f"--seconds-per-step must be positive, got {args.seconds_per_step}")
        slurm = None
        if args.executor == "slurm":
            flags = {"partition": args.partition, "gpus_per_run": args.gpus_per_run, "time_min": args.time_min,
                     "array_parallelism": args.array_parallelism}
            slurm = jobs.load_slurm_settings(args.slurm_config, flags)
            extra = _sbatch(args.sbatch)
            if extra:
                slurm["sbatch"] = {**slurm["sbatch"], **extra}
        datasets = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else None
        the_plan = plan.build_plan(args.profile, args.only, datasets, args.notebooks,
                                   seconds_per_step=args.seconds_per_step)
        if args.force:
            the_plan["runs"] = [{**r, "cached": False} for r in the_plan["runs"]]
        print(plan.plan_text(the_plan), flush=True)
        path = atomic_write_json(Path(args.notebooks) / the_plan["out_dir"] / "plan.json", the_plan)
        print(f"run_all: plan written to {os.path.normpath(path)}")
        if args.plan:
            return 0
        board = jobs.execute(the_plan, args.executor, args.jobs, args.notebooks, args.data_root, args.device,
                             args.force, slurm)
    except PoddError as e:
        print(f"run_all: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("run_all: interrupted; run the same command again to continue (finished runs are cached, "
              "distillations and evaluations resume from their checkpoints)", file=sys.stderr)
        return 130
    print(board.summary(), flush=True)
    return 1 if board.failures else 0


if __name__ == "__main__":
    sys.exit(main())
