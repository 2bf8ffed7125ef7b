"""The search for the scale at which the paper's claims appear (CIFAR-10, 1 IPC).

    python benchmarks/probes.py --costs                 # seconds per outer step of each knob
    python benchmarks/probes.py --run lr01-s300 w64     # run probes (cached; resumable)
    python benchmarks/probes.py --table                 # render benchmarks/probes.md

A probe is a set of config overrides on top of the `quick` profile. It distils the 16x6-patch
poster and the 5x2 tiling (same 64x160 pixels, one image per class) for each seed, evaluates
both as the profile evaluates, and appends one row per (representation, seed) to
benchmarks/probes.jsonl: the command, wall time, seconds per outer step and accuracies.
Runs go to the run cache (--cache, default ~/.cache/podd-kit/probes), so an interrupted probe
continues from its checkpoints and a finished one is never redone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

ROWS = HERE / "probes.jsonl"
TABLE = HERE / "probes.md"
CACHE = Path(os.environ.get("PODD_PROBE_CACHE", Path.home() / ".cache" / "podd-kit" / "probes"))

# The paper's inner problem (method notes section 4) and the release's start (section 1).
PAPER_INNER = {"width": 128, "window": 60, "totwindow": 200, "bs": 5000, "lr": 0.001}
RELEASE_INIT = {"init": "class_areas"}

# name -> (overrides on the quick profile, seeds). The quick profile itself: width 32, window 5
# of 20, bs 256, lr 0.03, 100 outer steps, 4 networks x 300 evaluation steps.
PROBES: dict[str, tuple[dict, tuple[int, ...]]] = {
    "quick": ({}, (0, 1)),
    "w128": ({"width": 128}, (0, 1, 2)),
    "w64": ({"width": 64}, (0, 1)),
    "w96": ({"width": 96}, (0, 1)),
    "w128-s50": ({"width": 128, "steps": 50}, (0, 1)),
    "w128-learned": ({"width": 128, "labels": "learned"}, (0, 1, 2)),
    "bs2000": ({"bs": 2000}, (0, 1)),
    "learned": ({"labels": "learned"}, (0, 1)),
    "lr01-s300": ({"lr": 0.01, "steps": 300}, (0, 1)),
    "lr003-s500": ({"lr": 0.003, "steps": 500}, (0, 1)),
    "areas-lr01-s300": ({**RELEASE_INIT, "lr": 0.01, "steps": 300}, (0, 1)),
    "w64-win20-s300": ({"width": 64, "window": 20, "totwindow": 60, "lr": 0.01, "steps": 300}, (0, 1)),
    "fig6-s100": ({**PAPER_INNER, **RELEASE_INIT, "steps": 100}, (0, 1)),
    "w128-s300": ({"width": 128, "steps": 300}, (0, 1, 2)),
    "w128-win10": ({"width": 128, "window": 10, "totwindow": 40}, (0, 1, 2)),
    # The release's softmax of pixel counts is the text's majority one-hot on this poster (counts differ by
    # tens of pixels; tests/unit/test_poddl.py), so the other fixed form worth a probe is the counts' proportions.
    "w128-proportional": ({"width": 128, "fixed_labels_form": "proportional"}, (0, 1, 2)),
    "w128-learned-s300": ({"width": 128, "labels": "learned", "steps": 300}, (0, 1, 2)),
}

# Knobs whose cost per outer step is measured first (--costs): the quick profile and one change each.
COSTS: dict[str, dict] = {
    "quick": {},
    "width 64": {"width": 64},
    "width 128": {"width": 128},
    "bs 1000": {"bs": 1000},
    "bs 5000": {"bs": 5000},
    "window 20 of 60": {"window": 20, "totwindow": 60},
    "window 60 of 200": {"window": 60, "totwindow": 200},
    "labels learned": {"labels": "learned"},
    "paper inner problem": PAPER_INNER,
}


def data_root() -> str | None:
    """The CIFAR-10 root: $PODD_DATA_ROOT, else ./data when it holds CIFAR-10, else torchvision's download."""
    root = os.environ.get("PODD_DATA_ROOT") or str(HERE.parent / "data")
    return root if Path(root, "cifar10").exists() or os.environ.get("PODD_DATA_ROOT") else None


def command(name: str) -> str:
    """The command line that runs one probe."""
    return f"python benchmarks/probes.py --run {name}"


def tiling() -> dict:
    """The 5x2 tiling of the 1-IPC poster: one non-overlapping patch per class area."""
    from podd_lib.config import tiling_overrides

    return tiling_overrides("cifar10", "quick")


def settled(name: str) -> str | None:
    """Why the probe needs no more seeds (no further seeds could make the poster beat the tiling), or None."""
    from podd_lib.kit.claims import MIN_SEEDS, SETTLED, probe_gaps, probe_verdict

    gap = probe_gaps(read_rows()).get(name)
    if gap is None or probe_verdict(gap) != SETTLED:
        return None
    return f"gaps {gap.text()} cannot become a mean above 2 s.e. over {MIN_SEEDS} seeds, whatever the other seeds give"


def run_probe(name: str, device: str, only_seeds: list[int] | None = None, early_stop: bool = True) -> list[dict]:
    """Distil and evaluate a probe's poster/tiling pairs seed by seed; stop once the verdict is settled; return new rows."""
    from podd_lib.kit.experiments import distill_and_evaluate

    over, seeds = PROBES[name]
    seeds = tuple(s for s in seeds if only_seeds is None or s in only_seeds)
    done = {(r["probe"], r["representation"], r["seed"]) for r in read_rows() if "probe" in r}
    rows = []
    for seed in seeds:
        why = settled(name) if early_stop else None
        if why:
            print(f"probe {name}: stopped before seed {seed}: {why}", flush=True)
            break
        for rep, extra in (("poster", {}), ("tiling", tiling())):
            if (name, rep, seed) in done:
                continue
            t0 = time.time()
            res = distill_and_evaluate("cifar10", 1.0, "quick", CACHE, {**extra, **over, "seed": seed},
                                       data_root(), tag=f"probe-{name}", device=device,
                                       hard_labels=False)
            soft = res["summary"]["soft"]
            row = {"probe": name, "representation": rep, "seed": seed, "overrides": over,
                   "acc_mean": soft["mean"], "acc_std": soft["std"],
                   "accs": res["eval"]["soft"]["by_step"][-1]["acc_pct"], "eval_step": soft["step"],
                   "outer_steps": res["steps"], "seconds_per_step": res["seconds_per_step_median"],
                   "wall_seconds": round(time.time() - t0, 1), "config_key": res["config_key"],
                   "computed_on": res.get("computed_on"), "command": command(name),
                   "date": time.strftime("%Y-%m-%d")}
            append_row(row)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def measure_costs(steps: int, device: str) -> list[dict]:
    """Median seconds per outer step (random curriculum) for each knob in COSTS, on real data."""
    import torch

    from podd_lib.config import resolve_config
    from podd_lib.run import adapt_config_to_data, distill, geometry_from_config, order_for
    from podd_lib.kit.experiments import load_real

    out = []
    for label, over in COSTS.items():
        cfg = resolve_config("cifar10", 1.0, "quick", {**over, "steps": steps + 1, "checkpoint_every": 10**6})
        real = load_real(cfg, data_root())
        cfg = adapt_config_to_data(cfg, real)
        order = order_for(cfg, list(real.classes), geometry_from_config(cfg))
        with __import__("tempfile").TemporaryDirectory() as tmp:
            st = distill(cfg, real, order, Path(tmp) / "run", device=device, progress=False)
        secs = [r["seconds"] for r in st.history][1:]  # the first step warms up
        row = {"cost": label, "overrides": over, "seconds_per_step": round(statistics.median(secs), 3),
               "steps_timed": len(secs), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
               "command": f"python benchmarks/probes.py --costs --cost-steps {steps}"}
        append_row(row)
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def read_rows() -> list[dict]:
    """Every row recorded so far."""
    return [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()] if ROWS.exists() else []


def append_row(row: dict) -> None:
    """Append one JSON row (a single write of one line)."""
    with open(ROWS, "a") as f:
        f.write(json.dumps(row) + "\n")


def profiles_running(overrides: dict) -> list[str]:
    """The profiles whose settings are `quick`'s with exactly these overrides (configs/profiles.toml)."""
    from podd_lib.config import PROFILES, profile_overrides

    quick = profile_overrides("quick", "cifar10")
    return [p for p in PROFILES if p != "quick" and {**quick, **overrides} == profile_overrides(p, "cifar10")]


def render_table(rows: list[dict]) -> str:
    """benchmarks/probes.md: the cost table, then one line per probe with poster and tiling side by side."""
    from podd_lib.kit.claims import BEATS_RULE, MIN_SEEDS, NOT_SHOWN, SETTLED, SHOWN, probe_gaps, probe_verdict

    lines = ["# Probes: where do the paper's claims appear?", "",
             "Generated by `python benchmarks/probes.py --table` from `benchmarks/probes.jsonl`; every row",
             "was measured on a 2-core CPU with the command beside it. CIFAR-10, 1 IPC, fixed labels unless",
             "the overrides say otherwise; `poster` = 16x6 patches, `tiling` = 5x2 (one image per class).",
             "Each probe's overrides apply on top of the `quick` profile. Timings depend on what else ran: while",
             "other work shared the cores, seconds per step and wall times were several times the idle machine's",
             "(compare the cost table); accuracies do not depend on it (the runs are bitwise deterministic at a",
             "fixed thread count). Fixed labels are the text's majority one-hot; the release's softmax of class",
             "pixel counts gives the same labels on this poster (tests/unit/test_poddl.py), so the other fixed form",
             "probed is the counts' proportions (`fixed_labels_form = \"proportional\"`).", "",
             "## Cost of each knob", "",
             "Median seconds per outer step (random curriculum, after one warm-up step) on real CIFAR-10, 1 IPC,",
             "16x6 patches. The machine was shared with other work while these ran; `note` says where that",
             "made a number unusable.", "",
             "| knob | overrides | s / outer step | threads | date | note |", "| --- | --- | --- | --- | --- | --- |"]
    for r in (r for r in rows if "cost" in r):
        lines.append(f"| {r['cost']} | `{json.dumps(r['overrides'])}` | {r['seconds_per_step']} | {r['threads']} "
                     f"| {r['date']} | {r.get('note', '')} |")
    lines += ["", "## Probes", "",
              "Accuracy: mean over seeds of each seed's mean over the evaluation networks (%). `gap` = poster minus "
              "tiling paired by distillation seed: mean \u00b1 standard error, then each seed's gap. The verdict is the "
              f"report's rule (podd_lib.kit.claims.paired: {BEATS_RULE}): `shown` when the mean gap exceeds twice its "
              "standard error over at least "
              f"{MIN_SEEDS} seeds, `too few seeds` below that, and `{SETTLED}` when the seeds run so far already rule "
              f"it out whatever the remaining seeds give (with {MIN_SEEDS} seeds, one seed where the poster does not lead "
              "is enough). A probe stops at that point (`--all-seeds` runs the rest anyway).",
              "", "| probe | overrides | poster | tiling | gap, paired over seeds | poster beats tiling | outer steps "
              "| s / step | wall (min) | command |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    by_probe: dict[str, list[dict]] = {}
    for r in (r for r in rows if "probe" in r):
        by_probe.setdefault(r["probe"], []).append(r)
    verdicts: dict[str, str] = {}
    gaps = probe_gaps(rows)
    for name, rs in by_probe.items():
        acc = {rep: {str(r["seed"]): r["acc_mean"] for r in rs if r["representation"] == rep} for rep in ("poster", "tiling")}
        gap = gaps[name]

        def mean(d: dict) -> str:
            return f"{statistics.mean(d.values()):.1f} ({len(d)} seed{'' if len(d) == 1 else 's'})" if d else "-"

        verdicts[name] = probe_verdict(gap)
        sps = statistics.median(r["seconds_per_step"] for r in rs if r["seconds_per_step"])
        wall = sum(r["wall_seconds"] for r in rs) / 60
        lines.append(f"| {name} | `{json.dumps(rs[0]['overrides'])}` | {mean(acc['poster'])} | {mean(acc['tiling'])} "
                     f"| {gap.text()} | {verdicts[name]} | {rs[0]['outer_steps']} | {sps:.2f} | {wall:.0f} "
                     f"| `{rs[0]['command']}` |")
    shown = [n for n, v in verdicts.items() if v == SHOWN]
    done = [n for n, v in verdicts.items() if v in (SHOWN, NOT_SHOWN)]
    early = [n for n, v in verdicts.items() if v == SETTLED]
    lines += ["", f"Probes with {MIN_SEEDS} or more seeds: {len(done)}; settled with fewer: {len(early)}; still open: "
              f"{len(verdicts) - len(done) - len(early)}. The poster beats the tiling by the rule in: "
              f"{', '.join(shown) if shown else 'none of them'}."]
    for name in shown:
        profiles = profiles_running(by_probe[name][0]["overrides"])
        lines.append(f"Probe {name} runs as the profile {', '.join(profiles)} (`./run_all.sh --profile {profiles[0]}`)."
                     if profiles else f"No profile runs probe {name}'s settings.")
    return "\n".join(lines) + "\n"


def write_table() -> None:
    """Render benchmarks/probes.md from the recorded rows, atomically."""
    from podd_lib.io import atomic_write_text

    atomic_write_text(TABLE, render_table(read_rows()))


def main() -> None:
    """Parse the command line and run what it asks."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", nargs="*", metavar="PROBE", help=f"probes to run: {', '.join(PROBES)}")
    p.add_argument("--costs", action="store_true", help="measure seconds per outer step of each knob first")
    p.add_argument("--cost-steps", type=int, default=3, help="timed outer steps per knob (after one warm-up)")
    p.add_argument("--table", action="store_true", help="write benchmarks/probes.md from the recorded rows")
    p.add_argument("--seeds", type=int, nargs="*", help="run only these of each probe's seeds (first seeds first)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--all-seeds", action="store_true",
                   help="run every seed even once the verdict is settled (by default a probe stops when no further "
                        "seeds could make the poster beat the tiling by the rule)")
    a = p.parse_args()
    unknown = [n for n in a.run or [] if n not in PROBES]
    if unknown:
        p.error(f"unknown probe(s) {', '.join(unknown)}; known: {', '.join(PROBES)}")
    if a.costs:
        measure_costs(a.cost_steps, a.device)
    for name in a.run or []:
        run_probe(name, a.device, a.seeds, early_stop=not a.all_seeds)
        write_table()
    if a.table:
        write_table()


if __name__ == "__main__":
    main()
