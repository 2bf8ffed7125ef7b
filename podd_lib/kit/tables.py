"""Results tables: our accuracy beside the paper's, with the delta, the profile and the command.

"Ours" is always the soft-label accuracy (%) at the last evaluation step, mean and population
standard deviation over the evaluation networks (pooled over seeds when several runs share a
row). "Paper" is the number printed in the paper (`kit.paper`), never computed. Every frame
keeps numeric helper columns (`ours_mean`, `paper_mean`, ...) for plots beside the formatted ones.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

from ..errors import PoddError
from . import paper

DASH = "\u2014"
OURS = "ours (mean \u00b1 std)"
PAPER = "paper (mean \u00b1 std)"
DELTA = "delta (ours \u2212 paper)"
PAPER_SOURCE = "reported in the paper"
NUMERIC_HELPERS = ("ours_mean", "ours_std", "paper_mean", "paper_std", "eval_step", "hard_mean", "hard_std",
                   "seed_means", "hard_seed_means")

QUICKSTART_COLUMNS = ["method", OURS, PAPER, DELTA, "profile"]
TABLE1_COLUMNS = ["method", "IPC", "poster", "patches", OURS, PAPER, DELTA, "profile"]
TABLE2_COLUMNS = ["method", OURS, PAPER, DELTA, "source"]
FIGURE6_COLUMNS = ["patch_grid", "patches", "steps", OURS, PAPER, DELTA, "profile"]
ORDER_COLUMNS = ["order", "grid", "score", "distance", OURS, "profile"]


def source_label(profile: str) -> str:
    """The "source" of a number computed here: 'this kit, profile X'."""
    return f"this kit, profile {profile}"


# ----------------------------------------------------------------------------- accuracies


def _final_accs(result: Mapping, kind: str) -> list[float] | None:
    """The per-network accuracies (%) at the last evaluation step, when the result holds them."""
    ev = result.get("eval") or {}
    block = ev.get(kind) if isinstance(ev.get(kind), Mapping) else None
    if block is None and "by_step" in ev:  # the full-dataset baseline: one block, one-hot labels
        block = ev
    steps = (block or {}).get("by_step") or []
    accs = steps[-1].get("acc_pct") if steps else None
    return [float(a) for a in accs] if accs else None


def _summary(result: Mapping, kind: str) -> dict | None:
    """{'mean', 'std', 'step'} of one result: its summary, else the full baseline's final block."""
    s = (result.get("summary") or {}).get(kind)
    if s and s.get("mean") is not None:
        return {"mean": float(s["mean"]), "std": float(s.get("std") or 0.0), "step": s.get("step")}
    ev = result.get("eval") or {}
    f = ev.get("final")
    if f and f.get("mean_pct") is not None:
        return {"mean": float(f["mean_pct"]), "std": float(f.get("std_pct") or 0.0), "step": f.get("step")}
    return None


def run_seed(result: Mapping) -> int:
    """The distillation seed of a result (older results carry it only in their config; default 0)."""
    return int(result.get("seed", (result.get("config") or {}).get("seed", 0)))


def accuracy(results: Mapping | Sequence[Mapping] | None, kind: str = "soft") -> dict | None:
    """Our accuracy {'mean', 'std', 'step', 'runs', 'by_seed'} of a result dict or of several (pooled).

    Works for distill_and_evaluate, random_real_baseline and full_data_baseline results (the full
    baseline has one-hot labels only, so `kind` does not matter there). Several runs (seeds) are
    pooled: mean and population std over all their evaluation networks. `by_seed` maps each run's
    seed to its own mean, for the paired comparisons of the claims. None when nothing is known.
    """
    if results is None:
        return None
    runs = [results] if isinstance(results, Mapping) else list(results)
    if not runs:
        return None
    sums = [_summary(r, kind) for r in runs]
    if any(s is None for s in sums):
        return None
    by_seed = {run_seed(r): s["mean"] for r, s in zip(runs, sums)}
    if len(runs) == 1:
        return {**sums[0], "runs": 1, "by_seed": by_seed}
    pooled = [_final_accs(r, kind) for r in runs]
    if all(p for p in pooled):
        accs = [a for p in pooled for a in p]
        mean = sum(accs) / len(accs)
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs))
    else:  # fake or trimmed results without per-network numbers: mean of means, mean of stds
        mean = sum(s["mean"] for s in sums) / len(sums)
        std = sum(s["std"] for s in sums) / len(sums)
    return {"mean": mean, "std": std, "step": sums[-1]["step"], "runs": len(runs), "by_seed": by_seed}


def fmt_pm(mean: float | None, std: float | None = None, digits: int = 1) -> str:
    """'59.1 ± 0.5' ('59.1' without a std, an em dash without a mean)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return DASH
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} \u00b1 {std:.{digits}f}"


def accuracy_row(method: str, ours: dict | None, paper_ms: tuple[float, float | None] | None,
                 profile: str | None, command: str | None, digits: int = 1, **extra: Any) -> dict:
    """One table row: ours (an accuracy() dict), the paper's (mean, std), the delta, the profile, the command.

    digits: decimals of the formatted ours/paper columns (the paper prints 1, figure 6 has 2).
    """
    p_mean, p_std = (paper_ms if paper_ms is not None else (None, None))
    o_mean = ours["mean"] if ours else None
    o_std = ours["std"] if ours else None
    delta = o_mean - p_mean if (o_mean is not None and p_mean is not None) else None
    return {
        "method": method, **extra,
        OURS: fmt_pm(o_mean, o_std, digits), PAPER: fmt_pm(p_mean, p_std, digits), DELTA: delta,
        "profile": profile or "", "command": command or "",
        "ours_mean": o_mean, "ours_std": o_std, "paper_mean": p_mean, "paper_std": p_std,
        "eval_step": ours.get("step") if ours else None,
        "seed_means": {str(k): v for k, v in sorted((ours or {}).get("by_seed", {}).items())},
    }


def fmt_acc(result: Mapping | Sequence[Mapping] | None, kind: str = "soft") -> str:
    """Our accuracy of a result (or pooled results) as '24.9 \u00b1 0.4' (an em dash when unknown)."""
    acc = accuracy(result, kind)
    return fmt_pm(acc["mean"] if acc else None, acc["std"] if acc else None)


def stack(frames: Mapping[str, Any], column: str = "dataset"):
    """One frame of several, each first given a column with its key (e.g. one table per dataset)."""
    import pandas as pd

    return pd.concat([df.assign(**{column: key})[[column, *df.columns]] for key, df in frames.items()],
                     ignore_index=True)


def _ipc_key(ipc: float) -> float:
    """IPC rounded to the paper's grid (0.1 steps) for look-ups."""
    return round(float(ipc), 2)


def _by_key(results: Iterable[Mapping], key) -> dict:
    """Group results by key(result), keeping first-seen order."""
    out: dict = {}
    for r in results:
        out.setdefault(key(r), []).append(r)
    return out


def _first(runs: Sequence[Mapping], field: str, default: Any = "") -> Any:
    """A field of the first run of a group."""
    return runs[0].get(field, default) if runs else default


def commands_of(runs: Mapping | Sequence[Mapping]) -> str:
    """The commands of a result or a group of results (seeds), each once, joined by ' ; '."""
    runs = [runs] if isinstance(runs, Mapping) else runs
    return " ; ".join(dict.fromkeys(r.get("command", "") for r in runs if r.get("command")))


def _is_tiling_run(r: Mapping) -> bool:
    """True for the RaT-BPTT baseline run (tag 'ratbptt', or a poster the patches tile exactly)."""
    return r.get("tag") == "ratbptt" or bool((r.get("geometry") or {}).get("is_tiling"))


def _grid_text(geom: Mapping | None, kind: str) -> str:
    """'16x6' for the patch grid, '160x64' (width x height) for the poster."""
    if not geom:
        return ""
    if kind == "patches":
        return f"{geom['p_x']}x{geom['p_y']}"
    return f"{geom['d_w']}x{geom['d_h']}"


# ----------------------------------------------------------------------------- tables


def table1_frame(results: Sequence[Mapping], dataset: str):
    """Paper Table 1 for one dataset: RaT-BPTT at 1 IPC, PoDD at every IPC, the full dataset.

    `results` are result dicts of distill_and_evaluate (PoDD runs; the RaT-BPTT tiling run is the
    one tagged 'ratbptt' or whose patches tile the poster) and optionally of full_data_baseline.
    Every IPC of the paper's table gets a row; ours is an em dash where it was not run.
    """
    import pandas as pd

    mine = [r for r in results if r.get("dataset") == dataset]
    tiling = [r for r in mine if r.get("tag") not in ("full", "random") and _is_tiling_run(r)]
    full = [r for r in mine if r.get("tag") == "full"]
    podd = _by_key((r for r in mine if r.get("tag") not in ("full", "random") and not _is_tiling_run(r)),
                   lambda r: _ipc_key(r["ipc"]))
    def geo(runs: Sequence[Mapping], kind: str) -> str:
        return _grid_text(_first(runs, "geometry", None), kind)

    rows = [accuracy_row("RaT-BPTT (tiling)", accuracy(tiling), paper.RATBPTT_1IPC.get(dataset),
                         _first(tiling, "profile"), commands_of(tiling), IPC=1.0, poster=geo(tiling, "poster"),
                         patches=geo(tiling, "patches"))]
    for ipc in sorted(set(paper.TABLE1_PODD) | set(podd), reverse=True):
        runs = podd.get(ipc, [])
        hard = accuracy(runs, "hard") or {}
        rows.append(accuracy_row("PoDD", accuracy(runs), paper.TABLE1_PODD.get(ipc, {}).get(dataset),
                                 _first(runs, "profile"), commands_of(runs), IPC=ipc, poster=geo(runs, "poster"),
                                 patches=geo(runs, "patches"), labels=_first(runs, "label_kind"),
                                 hard_mean=hard.get("mean"), hard_std=hard.get("std"),
                                 hard_seed_means={str(k): v for k, v in sorted(hard.get("by_seed", {}).items())}))
    rows.append(accuracy_row("Full dataset", accuracy(full), paper.FULL_DATASET.get(dataset), _first(full, "profile"),
                             commands_of(full), IPC=None, poster="", patches=""))
    return pd.DataFrame(rows)


def soft_hard_frame(runs: Sequence[Mapping], dataset: str, ipc: float):
    """PoDD's accuracy with the patches' soft labels (beside the paper's Table 1 number) and with hard labels."""
    import pandas as pd

    paper_ms = paper.TABLE1_PODD.get(_ipc_key(round(ipc, 1)), {}).get(dataset)
    prof, cmd = _first(runs, "profile"), commands_of(runs)
    return pd.DataFrame([accuracy_row("PoDD, soft labels", accuracy(runs, "soft"), paper_ms, prof, cmd),
                         accuracy_row("PoDD, hard labels (argmax)", accuracy(runs, "hard"), None, prof, cmd)])


TABLE2_OURS = {
    "podd": ("PoDD (poster, 1 IPC)", lambda d: paper.TABLE1_PODD[1.0].get(d)),
    "ratbptt": ("RaT-BPTT (tiling, 1 IPC)", lambda d: paper.RATBPTT_1IPC.get(d)),
    "random": ("Random real images (1 IPC)", lambda d: None),
    "full": ("Full dataset", lambda d: paper.FULL_DATASET.get(d)),
}
_TABLE2_COVERS = {"podd": "PoDD", "ratbptt": "RaT-BPTT"}


def table2_frame(ours: Mapping[str, Mapping | Sequence[Mapping]], dataset: str):
    """Paper Table 2 for one dataset: our runs, then the other methods as reported in the paper.

    `ours` maps 'podd', 'ratbptt', 'random', 'full' (any subset; other keys are shown under their
    own name) to a result dict or a list of them (seeds). Reported methods that one of our rows
    already shows (PoDD, RaT-BPTT) are not repeated. The 'source' column says where a number is from.
    """
    import pandas as pd

    rows = []
    for key, runs in ours.items():
        runs = [runs] if isinstance(runs, Mapping) else list(runs)
        label, paper_of = TABLE2_OURS.get(key, (key, lambda d: None))
        prof = _first(runs, "profile")
        rows.append(accuracy_row(label, accuracy(runs), paper_of(dataset), prof, commands_of(runs),
                                 source=source_label(prof) if prof else ""))
    covered = {_TABLE2_COVERS[k] for k in ours if k in _TABLE2_COVERS}
    for method, values in paper.TABLE2_REPORTED.items():
        if method in covered:
            continue
        v = values.get(dataset)
        rows.append(accuracy_row(method, None, None if v is None else (v, None), None, None, source=PAPER_SOURCE))
    return pd.DataFrame(rows)


def figure6_frame(results: Sequence[Mapping], all_paper_grids: bool = True):
    """Paper figure 6: accuracy against the patch grid (CIFAR-10, 1 IPC), ours and the paper's.

    One row per patch grid, sorted by patch count; with all_paper_grids every grid of the figure gets
    a row (ours empty where it was not run).
    """
    import pandas as pd

    groups = _by_key(results, lambda r: (r["geometry"]["p_x"], r["geometry"]["p_y"]))
    grids = set(groups) | (set(paper.FIGURE6) if all_paper_grids else set())
    rows = []
    for px, py in sorted(grids, key=lambda g: (g[0] * g[1], g)):
        runs = groups.get((px, py), [])
        p = paper.FIGURE6.get((px, py))
        rows.append(accuracy_row("PoDD", accuracy(runs), None if p is None else (p, None),
                                 _first(runs, "profile"), commands_of(runs), digits=2, patch_grid=f"{px}x{py}",
                                 patches=px * py, steps=_first(runs, "steps", None)))
    return pd.DataFrame(rows)


def _class_names(dataset: str, classes: Sequence[str] | None) -> list[str]:
    """The class names given, else those of the published-orderings fixture (CIFAR-10/100)."""
    if classes is not None:
        return list(classes)
    from ..poco import load_fixtures

    entry = load_fixtures().get(dataset)
    if not isinstance(entry, dict) or "classes" not in entry:
        raise PoddError(f"pass the class names of {dataset} to order_frame")
    return list(entry["classes"])


def _order_grid(result: Mapping, classes: list[str]) -> list[list[int]]:
    """The class grid a run used: its 'order_grid', else resolved from its config's order spec."""
    if result.get("order_grid"):
        return [list(row) for row in result["order_grid"]]
    from ..poco import resolve_order

    recorded = result["config"]
    o_x, o_y = recorded["class_grid"]
    return resolve_order(recorded["order"], classes, o_y, o_x, dataset=recorded["dataset"])


def order_frame(results: Sequence[Mapping], dist: Any, classes: Sequence[str] | None = None,
                distance: str = "CLIP text"):
    """The class-order ablation: ordering score (1 / summed neighbour distance) and accuracy per order.

    `dist` is the (n, n) class distance matrix the score uses; `distance` names it in the table.
    Use `pearson(df['score'], df['ours_mean'])` for the correlation (the paper reports 0.76).
    """
    import pandas as pd

    from ..poco import ordering_score

    groups = _by_key(results, lambda r: r["config"]["order"])
    rows = []
    for spec, runs in groups.items():
        names = _class_names(runs[0]["config"]["dataset"], classes)
        grid = _order_grid(runs[0], names)
        text = " / ".join(" ".join(str(names[k]) for k in row) for row in grid)
        rows.append(accuracy_row("PoDD", accuracy(runs), None, _first(runs, "profile"), commands_of(runs),
                                 order=spec, grid=text, score=ordering_score(grid, dist), distance=distance))
    return pd.DataFrame(rows)


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson correlation of two equally long sequences (NaN when either is constant)."""
    xs, ys = [float(v) for v in xs], [float(v) for v in ys]
    if len(xs) != len(ys):
        raise PoddError(f"pearson needs sequences of equal length, got {len(xs)} and {len(ys)}")
    if len(xs) < 2:
        raise PoddError("pearson needs at least two points")
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return float("nan")
    return sxy / math.sqrt(sxx * syy)



# ----------------------------------------------------------------------------- markdown


def _cell(value: Any, floatfmt: str) -> str:
    """One markdown table cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        text = format(value, floatfmt)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(df: Any, columns: Sequence[str] | None = None, floatfmt: str = ".4g") -> str:
    """A GitHub-style markdown table of a DataFrame (or list of dicts); empty cells for missing values."""
    import pandas as pd

    frame = df if isinstance(df, pd.DataFrame) else pd.DataFrame(list(df))
    cols = [c for c in (columns if columns is not None else frame.columns) if c in frame.columns]
    if not cols:
        raise PoddError("markdown_table: no columns to show")
    lines = ["| " + " | ".join(_cell(str(c), floatfmt) for c in cols) + " |",
             "|" + "|".join(" --- " for _ in cols) + "|"]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_cell(row[c], floatfmt) for c in cols) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- algorithms under posters

ALGORITHM_NAMES = {"ratbptt": "RaT-BPTT", "mtt": "MTT", "dm": "DM", "dc": "DC/DSA"}
ALGORITHM_COLUMNS = ["algorithm", "synthetic set", "real batches", OURS, "reported (tiling, random)", "source",
                     "s / step", "profile"]


def algorithms_frame(results: Sequence[Mapping]):
    """Notebook 07's table: one row per (algorithm, poster or tiling, sampling), reported numbers beside.

    Each result needs 'algorithm', 'representation' ('poster' or 'tiling') and 'sampling' keys
    (kit.experiments.algorithm_run results). The reported number is the method's
    own at 1 IPC with ordinary images and random batches, so it sits on the tiling + random row.
    """
    import pandas as pd

    rows = []
    for (algo, rep, samp), runs in _by_key(results, lambda r: (r["algorithm"], r["representation"], r["sampling"])).items():
        r, ours = runs[0], accuracy(runs)
        rep_ms = paper.ALGORITHMS_REPORTED_CIFAR10.get(algo) if r.get("dataset") == "cifar10" else None
        on_row = rep_ms is not None and rep == "tiling" and samp == "random"
        rows.append({
            "algorithm": ALGORITHM_NAMES.get(algo, algo), "synthetic set": rep,
            "real batches": "n/a (experts)" if algo == "mtt" else samp,
            OURS: fmt_pm(ours["mean"] if ours else None, ours["std"] if ours else None),
            "reported (tiling, random)": fmt_pm(rep_ms[0], rep_ms[1]) if on_row else "",
            "source": (rep_ms[2] + ", reported") if on_row else source_label(r.get("profile", "")),
            "s / step": r.get("seconds_per_step_median"), "profile": r.get("profile", ""),
            "command": commands_of(runs), "ours_mean": ours["mean"] if ours else None,
            "ours_std": ours["std"] if ours else None, "algo_key": algo,
            "seed_means": {str(k): v for k, v in sorted((ours or {}).get("by_seed", {}).items())},
        })
    return pd.DataFrame(rows)




# ----------------------------------------------------------------------------- other architectures

ARCH_NAMES = {"convnet": "ConvNet", "resnet18": "ResNet-18", "vgg11": "VGG-11", "alexnet": "AlexNet"}
CROSS_ARCH_COLUMNS = ["architecture", "representation", OURS, "networks", "steps", "profile"]


def cross_arch_frame(results: Sequence[Mapping]):
    """Notebook 09's long table: one row per (architecture, set), seeds pooled, with each network's accuracy.

    Each result needs 'arch' and 'representation' (kit.studies.cross_arch_runs results).
    """
    import pandas as pd

    groups: dict[tuple[str, str], list[Mapping]] = {}
    for r in results:
        groups.setdefault((r["arch"], r["representation"]), []).append(r)
    rows = []
    for (arch, rep), runs in groups.items():
        ours = accuracy(runs)
        accs = [a for r in runs for a in (_final_accs(r, "soft") or [])]
        rows.append({"architecture": ARCH_NAMES.get(arch, arch), "representation": rep,
                     OURS: fmt_pm(ours["mean"] if ours else None, ours["std"] if ours else None),
                     "networks": sum(len(_final_accs(r, "soft") or []) for r in runs) or None,
                     "steps": ours["step"] if ours else None, "profile": _first(runs, "profile"),
                     "command": commands_of(runs), "ours_mean": ours["mean"] if ours else None,
                     "ours_std": ours["std"] if ours else None, "ours_accs": accs or None, "arch_key": arch,
                     "seed_means": {str(k): v for k, v in sorted((ours or {}).get("by_seed", {}).items())}})
    return pd.DataFrame(rows)


def cross_arch_pivot(df: Any):
    """Architecture x representation: mean ± std of each cell."""
    table = df.pivot(index="architecture", columns="representation", values=OURS)
    order = list(dict.fromkeys(df["architecture"]))
    return table.loc[order, list(dict.fromkeys(df["representation"]))].reset_index()
