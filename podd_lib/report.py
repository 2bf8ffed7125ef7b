"""Tables, figures and the written report of the notebooks: the paper's numbers beside ours.

The notebooks stay thin: they run experiments through `podd_lib.experiments` and hand the
result dicts to the functions here, which build

  * pandas tables with our accuracy, the paper's, the delta (ours - paper, in accuracy points),
    the profile and the command that produced each number (`table1_frame`, `table2_frame`,
    `figure6_frame`, `order_frame`);
  * matplotlib figures (`accuracy_vs_ipc_plot`, `figure6_plot`, `order_scatter`, ...), saved as
    PNG and PDF under `outputs/figures/` by `save_figure`;
  * one results file per notebook, `outputs/results/<notebook>.json` (`save_results`), which
    `build_report` turns into `outputs/report.md` and `outputs/report.html`.

"Ours" is always the soft-label accuracy (%) at the last evaluation step, mean and population
standard deviation over the evaluation networks (pooled over seeds when several runs share a
row). "Paper" is the number printed in the paper (`podd_lib.paper`), never computed.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from . import paper
from .errors import PoddError
from .io import atomic_savefig, atomic_write_json, atomic_write_text

DASH = "\u2014"
OURS = "ours (mean \u00b1 std)"
PAPER = "paper (mean \u00b1 std)"
DELTA = "delta (ours \u2212 paper)"
PAPER_SOURCE = "reported in the paper"
NUMERIC_HELPERS = ("ours_mean", "ours_std", "paper_mean", "paper_std", "eval_step")
REPO_ROOT = Path(__file__).resolve().parents[1]

PROFILE_MEANING = {
    "smoke": "the smoke profile: a sliver of the data, a tiny network and a few distillation steps "
             "(see podd_lib/configs/profiles.toml). It only checks that everything runs end to end: its "
             "accuracies mean nothing and must not be compared with the paper.",
    "quick": "the quick profile: a reduced reproduction for a 2-core CPU (narrower network, shorter "
             "unroll, smaller real batches and far fewer distillation steps than the paper, see "
             "podd_lib/configs/profiles.toml). Expect lower accuracies than the paper.",
    "paper": "the paper profile: the paper's settings (meant for a GPU).",
}


TABLE1_COLUMNS = ["method", "IPC", "poster", "patches", OURS, PAPER, DELTA, "profile"]
TABLE2_COLUMNS = ["method", OURS, PAPER, DELTA, "source"]
FIGURE6_COLUMNS = ["patch_grid", "patches", "steps", OURS, PAPER, DELTA, "profile"]
ORDER_COLUMNS = ["order", "grid", "score", "distance", OURS, "profile"]


def source_label(profile: str) -> str:
    """The "source" of a number computed here: 'this kit, profile X'."""
    return f"this kit, profile {profile}"


# ----------------------------------------------------------------------------- notebook set-up


def limit_threads(profile: str) -> int:
    """Set torch's intra-op threads for a notebook: $PODD_NUM_THREADS, else 1 under the smoke profile.

    The smoke profile's tensors are tiny; on a small shared machine extra threads only wait on each
    other (a smoke distillation step took about 0.3 s with 1 thread and 5 to 10 s with 2 threads
    while another job used the second core). Other profiles keep torch's default unless the
    variable is set. Returns the thread count now in use.
    """
    import torch

    env = os.environ.get("PODD_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise PoddError(f"PODD_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise PoddError(f"PODD_NUM_THREADS must be a positive integer, got {env!r}")
        torch.set_num_threads(n)
    elif profile == "smoke":
        torch.set_num_threads(1)
    return torch.get_num_threads()


def profile_deviations(dataset: str, profile: str, ipc: float = 1.0, overrides: dict | None = None) -> list[str]:
    """One line per setting the profile changes from the paper's config: 'width = 8 (paper: 128)'.

    Settings of other algorithms than the one in overrides (default RaT-BPTT) are not listed.
    """
    from .config import irrelevant_keys, resolve_config

    cfg = resolve_config(dataset, ipc, profile, overrides)
    base = resolve_config(dataset, ipc, "paper", overrides)
    unused = irrelevant_keys(cfg)
    def shown(key: str, value: Any) -> str:
        return "0 (all)" if key.endswith("_per_class") and value == 0 else repr(value)

    from .config import algorithm_defaults

    ours = algorithm_defaults()  # the other algorithms' settings: the kit's defaults, from their own papers

    def ref(k: str) -> str:
        return "default" if k in ours else "paper"

    return [f"{k} = {shown(k, v)} ({ref(k)}: {shown(k, base.get(k))})" for k, v in cfg["profile_overrides"].items()
            if k not in unused]


def tiling_overrides(dataset: str, profile: str = "paper") -> dict:
    """Config overrides for the RaT-BPTT baseline at 1 IPC: one patch per class area, tiling the poster.

    The patch grid equals the class grid and the poster is exactly o_y*h by o_x*w pixels (CIFAR-10:
    5x2 patches on a 64x160 poster), so the patches do not overlap: 1 image per class, as in RaT-BPTT.
    """
    from .config import resolve_config

    cfg = resolve_config(dataset, 1.0, profile)
    if not isinstance(cfg["class_grid"], list):
        raise PoddError(f"the class grid of {dataset} is only known from its data")
    o_x, o_y = cfg["class_grid"]
    h, w = cfg["image_size"]
    return {"patch_grid": [o_x, o_y], "poster_size": [o_y * h, o_x * w]}


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


def accuracy(results: Mapping | Sequence[Mapping] | None, kind: str = "soft") -> dict | None:
    """Our accuracy {'mean', 'std', 'step', 'runs'} of a result dict or of several (pooled).

    Works for distill_and_evaluate, random_real_baseline and full_data_baseline results (the full
    baseline has one-hot labels only, so `kind` does not matter there). Several runs (seeds) are
    pooled: mean and population std over all their evaluation networks. None when nothing is known.
    """
    if results is None:
        return None
    runs = [results] if isinstance(results, Mapping) else list(results)
    if not runs:
        return None
    if len(runs) == 1:
        s = _summary(runs[0], kind)
        return None if s is None else {**s, "runs": 1}
    pooled = [_final_accs(r, kind) for r in runs]
    sums = [_summary(r, kind) for r in runs]
    if any(s is None for s in sums):
        return None
    if all(p for p in pooled):
        accs = [a for p in pooled for a in p]
        mean = sum(accs) / len(accs)
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs))
    else:  # fake or trimmed results without per-network numbers: mean of means, mean of stds
        mean = sum(s["mean"] for s in sums) / len(sums)
        std = sum(s["std"] for s in sums) / len(sums)
    return {"mean": mean, "std": std, "step": sums[-1]["step"], "runs": len(runs)}


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
    }


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
        rows.append(accuracy_row("PoDD", accuracy(runs), paper.TABLE1_PODD.get(ipc, {}).get(dataset),
                                 _first(runs, "profile"), commands_of(runs), IPC=ipc, poster=geo(runs, "poster"),
                                 patches=geo(runs, "patches")))
    rows.append(accuracy_row("Full dataset", accuracy(full), paper.FULL_DATASET.get(dataset), _first(full, "profile"),
                             commands_of(full), IPC=None, poster="", patches=""))
    return pd.DataFrame(rows)


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
    from .poco import load_fixtures

    entry = load_fixtures().get(dataset)
    if not isinstance(entry, dict) or "classes" not in entry:
        raise PoddError(f"pass the class names of {dataset} to order_frame")
    return list(entry["classes"])


def _order_grid(result: Mapping, classes: list[str]) -> list[list[int]]:
    """The class grid a run used: its 'order_grid', else resolved from its config's order spec."""
    if result.get("order_grid"):
        return [list(row) for row in result["order_grid"]]
    from .poco import resolve_order

    cfg = result["config"]
    o_x, o_y = cfg["class_grid"]
    return resolve_order(cfg["order"], classes, o_y, o_x, dataset=cfg["dataset"])


def order_frame(results: Sequence[Mapping], dist: Any, classes: Sequence[str] | None = None,
                distance: str = "CLIP text"):
    """The class-order ablation: ordering score (1 / summed neighbour distance) and accuracy per order.

    `dist` is the (n, n) class distance matrix the score uses; `distance` names it in the table.
    Use `pearson(df['score'], df['ours_mean'])` for the correlation (the paper reports 0.76).
    """
    import pandas as pd

    from .poco import ordering_score

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


def class_mean_distances(real: Any) -> Any:
    """Cosine distances (n, n) between the class means of real.x_train (in its preprocessed, e.g. ZCA, space).

    A stand-in for the CLIP text distances of PoCO when CLIP weights are not available: it measures
    how alike the classes look in the training images, not how alike their names are.
    """
    import torch

    from .poco import cosine_distances

    x = torch.as_tensor(real.x_train).double().flatten(1)
    y = torch.as_tensor(real.y_train).long()
    n = len(real.classes) if hasattr(real, "classes") else int(y.max()) + 1
    sums = torch.zeros(n, x.shape[1], dtype=torch.float64).index_add_(0, y, x)
    counts = torch.bincount(y, minlength=n).double()
    if (counts == 0).any():
        raise PoddError(f"class {int(torch.nonzero(counts == 0)[0])} has no training images")
    return cosine_distances(sums / counts[:, None])


# ----------------------------------------------------------------------------- figures


def _plt():
    """matplotlib.pyplot (imported late)."""
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, out_dir: str | os.PathLike, name: str) -> list[Path]:
    """Write out_dir/figures/name.png and name.pdf atomically; returns both paths."""
    if not name or "/" in name or "\\" in name:
        raise PoddError(f"figure name must be a plain file name, got {name!r}")
    folder = Path(out_dir) / "figures"
    return [atomic_savefig(fig, folder / f"{name}.{ext}", dpi=150, bbox_inches="tight") for ext in ("png", "pdf")]


def show_figure(fig: Any, out_dir: str | os.PathLike, name: str) -> None:
    """save_figure, then display the saved PNG in the notebook and close the figure.

    The PNG is shown from its bytes, so this works whatever matplotlib backend is active (viz.poster_figure
    switches to Agg, which stops the notebook's inline rendering of figures).
    """
    paths = save_figure(fig, out_dir, name)
    _plt().close(fig)
    try:
        from IPython.display import Image, display
    except ImportError:  # not in IPython: the files are enough
        return
    display(Image(data=paths[0].read_bytes(), format="png"))


def accuracy_vs_ipc_plot(df: Any, dataset: str):
    """Accuracy against IPC: ours and the paper's PoDD curve, with the RaT-BPTT 1-IPC lines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    pod = df[df["method"] == "PoDD"].sort_values("IPC")
    ax.plot(pod["IPC"], pod["paper_mean"], "o-", color="tab:blue", label="PoDD, paper")
    mine = pod[pod["ours_mean"].notna()]
    if len(mine):
        ax.errorbar(mine["IPC"], mine["ours_mean"], yerr=mine["ours_std"].fillna(0), fmt="s--", color="tab:orange",
                    capsize=3, label=f"PoDD, ours ({', '.join(sorted(set(mine['profile'])))})")
    rat = df[df["method"].str.startswith("RaT-BPTT")]
    if len(rat) and rat["paper_mean"].notna().any():
        ax.axhline(float(rat["paper_mean"].iloc[0]), color="tab:blue", ls=":", lw=1,
                   label="RaT-BPTT 1 IPC, paper")
    if len(rat) and rat["ours_mean"].notna().any():
        ax.axhline(float(rat["ours_mean"].iloc[0]), color="tab:orange", ls=":", lw=1,
                   label="RaT-BPTT 1 IPC (tiling), ours")
    ax.set_xlabel("images per class (IPC)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset}: accuracy vs IPC (paper Table 1)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def figure6_plot(df: Any):
    """Accuracy against the number of patches (paper figure 6), ours beside the paper's."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    d = df.sort_values("patches")
    known = d[d["paper_mean"].notna()]
    ax.plot(known["patches"], known["paper_mean"], "o-", color="tab:blue", label="paper (500 steps)")
    mine = d[d["ours_mean"].notna()]
    if len(mine):
        ax.errorbar(mine["patches"], mine["ours_mean"], yerr=mine["ours_std"].fillna(0), fmt="s--",
                    color="tab:orange", capsize=3, label=f"ours ({', '.join(sorted(set(mine['profile'])))})")
    for _, r in known.iterrows():
        ax.annotate(r["patch_grid"], (r["patches"], r["paper_mean"]), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=7)
    ax.set_xscale("log")
    ax.set_xticks(list(d["patches"]))
    ax.set_xticklabels([str(p) for p in d["patches"]], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("number of patches p (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("CIFAR-10, 1 IPC: accuracy vs patch count (paper figure 6)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def order_scatter(df: Any, corr: float, paper_corr: float = paper.ORDER_CORRELATION):
    """Ordering score against accuracy, one point per class order, with our and the paper's correlation."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    ax.errorbar(df["score"], df["ours_mean"], yerr=df["ours_std"].fillna(0), fmt="o", color="tab:orange", capsize=3)
    for _, r in df.iterrows():
        ax.annotate(str(r["order"]), (r["score"], r["ours_mean"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(5))
    dist = str(df["distance"].iloc[0]) if "distance" in df and len(df) else "class"
    ax.set_xlabel(f"ordering score (1 / summed {dist} distance of neighbours)")
    ax.set_ylabel("test accuracy (%)")
    r_txt = "n/a" if corr != corr else f"{corr:.2f}"
    ax.set_title(f"class order ablation: Pearson r = {r_txt} (paper: {paper_corr:.2f})", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def loss_curve_plot(metrics: Any, title: str = "distillation loss"):
    """Outer loss (and poster gradient norm) per distillation step, from a run's metrics.csv."""
    import pandas as pd

    plt = _plt()
    m = pd.read_csv(metrics) if isinstance(metrics, (str, os.PathLike)) else metrics
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(m["step"], m["loss"], "o-" if len(m) < 30 else "-", color="tab:blue", label="loss on real batch")
    ax.set_xlabel("outer step")
    ax.set_ylabel("loss")
    if "grad_norm" in m:
        ax2 = ax.twinx()
        ax2.plot(m["step"], m["grad_norm"], "--", color="tab:gray", alpha=0.7, label="poster grad norm")
        ax2.set_ylabel("grad norm", color="tab:gray")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def patch_label_grid(y: Any, p_x: int, p_y: int):
    """(p_y, p_x) arrays of the argmax class and its probability of x-major patch labels (p, n)."""
    import torch

    y = torch.as_tensor(y).detach().float().cpu()
    if y.ndim != 2 or y.shape[0] != p_x * p_y:
        raise PoddError(f"patch labels must be ({p_x * p_y}, n), got {tuple(y.shape)}")
    top, cls = y.max(dim=1)
    # patch k = i * p_y + j sits at column i, row j
    return cls.reshape(p_x, p_y).T.numpy(), top.reshape(p_x, p_y).T.numpy()


def label_map_plot(y: Any, geom: Any, classes: Sequence[str], title: str | None = None):
    """The label map: each patch's most likely class drawn on the patch grid, shaded by its probability."""
    import numpy as np

    plt = _plt()
    cls, top = patch_label_grid(y, geom.p_x, geom.p_y)
    n = len(classes)
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20", max(n, 2))
    rgba = cmap(cls % cmap.N)
    rgba[..., 3] = 0.35 + 0.65 * np.clip(top, 0, 1)
    fig, ax = plt.subplots(figsize=(8, 8 * geom.p_y / geom.p_x + 0.8))
    ax.imshow(rgba, interpolation="nearest")
    if geom.p_x * geom.p_y <= 400:
        for j in range(geom.p_y):
            for i in range(geom.p_x):
                ax.text(i, j, str(classes[cls[j, i]])[:5], ha="center", va="center", fontsize=6)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"label map: argmax of each patch's label ({geom.p_x}x{geom.p_y} patches; "
                 "shade = its probability)", fontsize=9)
    fig.tight_layout()
    return fig


def label_tensor_plot(Y: Any, classes: Sequence[str], title: str | None = None):
    """A learned label tensor Y (n, l_h, l_w): the top class of every cell and its share of the cell's mass."""
    import torch

    plt = _plt()
    Y = torch.as_tensor(Y).detach().float().cpu().clamp_min(0)
    if Y.ndim != 3 or Y.shape[0] != len(classes):
        raise PoddError(f"Y must be ({len(classes)}, l_h, l_w), got {tuple(Y.shape)}")
    share = Y / Y.sum(0, keepdim=True).clamp_min(1e-12)
    top, cls = share.max(0)
    n, l_h, l_w = Y.shape
    fig, ax = plt.subplots(figsize=(max(3.0, 1.3 * l_w), max(1.5, 1.0 * l_h + 0.6)))
    ax.imshow(top.numpy(), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    for r in range(l_h):
        for c in range(l_w):
            ax.text(c, r, f"{classes[int(cls[r, c])]}\n{float(top[r, c]):.2f}", ha="center", va="center",
                    fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"learned labels Y ({l_h}x{l_w} cells): top class and its share", fontsize=9)
    fig.tight_layout()
    return fig


def table2_plot(df: Any, dataset: str):
    """Horizontal bars: every method's accuracy at 1 IPC, the paper's and ours."""
    import numpy as np

    plt = _plt()
    d = df.iloc[::-1].reset_index(drop=True)
    y = np.arange(len(d))
    fig, ax = plt.subplots(figsize=(7.0, 0.38 * len(d) + 1.2))
    ax.barh(y + 0.2, d["paper_mean"].fillna(0), height=0.38, color="tab:blue", label="paper")
    ax.barh(y - 0.2, d["ours_mean"].fillna(0), height=0.38, xerr=d["ours_std"].fillna(0), color="tab:orange",
            label="ours")
    ax.set_yticks(y)
    ax.set_yticklabels(d["method"], fontsize=8)
    ax.set_xlabel("test accuracy (%)")
    ax.set_title(f"{dataset}, 1 IPC (paper Table 2)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def class_areas_plot(poster: Any, geom: Any, order: Sequence[Sequence[int]], classes: Sequence[str],
                     preprocess: Any = None, title: str | None = None):
    """The poster cut along its class grid: one panel per class area, named (paper figure 8's reading)."""
    from .viz import poster_to_image

    plt = _plt()
    img = poster_to_image(poster, geom, preprocess).numpy()
    ch, cw = geom.d_h / geom.o_y, geom.d_w / geom.o_x
    fig, axes = plt.subplots(geom.o_y, geom.o_x, figsize=(1.6 * geom.o_x, 1.7 * geom.o_y), squeeze=False)
    for r, row in enumerate(order):
        for c, k in enumerate(row):
            y0, y1 = int(round(r * ch)), int(round((r + 1) * ch))
            x0, x1 = int(round(c * cw)), int(round((c + 1) * cw))
            ax = axes[r][c]
            area = img[y0:y1, x0:x1]
            ax.imshow(area if area.shape[2] == 3 else area[..., 0], cmap=None if area.shape[2] == 3 else "gray",
                      interpolation="nearest")
            ax.set_title(str(classes[k]), fontsize=8)
            ax.set_axis_off()
    fig.suptitle(title or "class areas of the poster", fontsize=10)
    fig.tight_layout()
    return fig


def class_grid_plot(names: Sequence[Sequence[str]], title: str, fontsize: float = 8):
    """A class ordering as a table of names (rows top to bottom), like paper figures 7 and 8."""
    plt = _plt()
    o_y, o_x = len(names), len(names[0])
    fig, ax = plt.subplots(figsize=(max(4.0, 1.25 * o_x), max(1.2, 0.5 * o_y + 0.6)))
    for r, row in enumerate(names):
        for c, name in enumerate(row):
            ax.add_patch(plt.Rectangle((c, r), 1, 1, fill=(r + c) % 2 == 0, fc="#eef3fb", ec="#888", lw=0.6))
            ax.text(c + 0.5, r + 0.5, str(name).replace("_", " "), ha="center", va="center", fontsize=fontsize)
    ax.set_xlim(0, o_x)
    ax.set_ylim(o_y, 0)
    ax.set_aspect("equal" if o_x > 6 else "auto")
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def traversal_plot(cells_by_style: Mapping[str, Sequence[tuple[int, int]]], o_y: int, o_x: int):
    """The PoCO grid walks: the visiting rank in every cell and arrows between consecutive cells."""
    plt = _plt()
    k = len(cells_by_style)
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k * max(1.0, o_x / max(o_y, 1)) / 2 + 1, 0.9 * o_y + 1.2),
                             squeeze=False)
    for ax, (style, cells) in zip(axes[0], cells_by_style.items()):
        for rank, (r, c) in enumerate(cells):
            ax.add_patch(plt.Rectangle((c, r), 1, 1, fill=False, ec="#888", lw=0.6))
            ax.text(c + 0.5, r + 0.5, str(rank), ha="center", va="center", fontsize=9)
        for (r0, c0), (r1, c1) in zip(cells[:-1], cells[1:]):
            ax.annotate("", xy=(c1 + 0.5, r1 + 0.5), xytext=(c0 + 0.5, r0 + 0.5),
                        arrowprops=dict(arrowstyle="->", color="tab:red", alpha=0.6, lw=0.8))
        ax.set_xlim(0, o_x)
        ax.set_ylim(o_y, 0)
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.set_title(f"{style} walk ({o_y}x{o_x})", fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- results files


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy/pandas scalars to Python, NaN to None, tuples to lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _rows_of(rows: Any) -> list[dict]:
    """A DataFrame or a list of dicts as a list of plain dicts."""
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    return [_plain(dict(r)) for r in rows]


def root_relative(command: str, out_dir: str | os.PathLike) -> str:
    """Rewrite the out_dir prefix in a command so the command runs from the repository root.

    The notebooks run in notebooks/ with out_dir '../outputs'; the commands in the report should
    read 'outputs/runs/...'. Outside the repository the prefix becomes an absolute path.
    """
    prefix = str(out_dir).rstrip("/\\")
    if not prefix or prefix == ".":
        return command
    target = Path(out_dir).resolve()
    try:
        new = target.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        new = str(target)
    pattern = re.compile(r"(?<![\w./-])" + re.escape(prefix) + r"(?=[/\\])")
    return pattern.sub(new.replace("\\", "\\\\"), command)


def save_results(out_dir: str | os.PathLike, name: str, rows: Any, profile: str, commands: Sequence[str] = (),
                 notes: Sequence[str] = (), title: str | None = None, columns: Sequence[str] | None = None,
                 tables: Mapping[str, Any] | None = None) -> Path:
    """Write out_dir/results/<name>.json: {"name", "title", "profile", "rows", "columns", "commands", "notes"}.

    rows: a DataFrame or a list of dicts (the table, with 'command' per row when known); commands:
    further commands that produced the numbers (row commands are added); columns: the columns the
    report shows (default: all but the numeric helper columns and 'command'); tables: optional
    further tables {caption: rows}. Commands are rewritten to run from the repository root.
    """
    if not name or "/" in name or "\\" in name:
        raise PoddError(f"results name must be a plain file name, got {name!r}")
    plain = _rows_of(rows)
    extra = {str(k): _rows_of(v) for k, v in (tables or {}).items()}
    for r in [*plain, *(r for t in extra.values() for r in t)]:
        if r.get("command"):
            r["command"] = " ; ".join(root_relative(c, out_dir) for c in r["command"].split(" ; "))
    cmds = [root_relative(c, out_dir) for c in commands]
    for r in [*plain, *(r for t in extra.values() for r in t)]:
        cmds += [c for c in (r.get("command") or "").split(" ; ") if c]
    payload = {
        "name": name, "title": title or name, "profile": profile, "rows": plain,
        "columns": list(columns) if columns is not None else None,
        "commands": list(dict.fromkeys(cmds)), "notes": [str(n) for n in notes], "tables": extra,
    }
    return atomic_write_json(Path(out_dir) / "results" / f"{name}.json", payload)


def load_results(out_dir: str | os.PathLike) -> list[dict]:
    """Every out_dir/results/*.json, sorted by file name."""
    folder = Path(out_dir) / "results"
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PoddError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
        data.setdefault("name", path.stem)
        out.append(data)
    return out


# ----------------------------------------------------------------------------- markdown and HTML


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


def _display_columns(rows: list[dict], columns: Sequence[str] | None) -> list[str]:
    """The columns a results table shows in the report."""
    if columns:
        return list(columns)
    seen: dict[str, None] = {}
    for r in rows:
        for k in r:
            if k not in NUMERIC_HELPERS and k != "command":
                seen.setdefault(k, None)
    return list(seen)


def _table_with_commands(rows: list[dict], columns: Sequence[str] | None, commands: list[str]) -> str:
    """A results table with a 'cmd' column pointing into the numbered command list."""
    import pandas as pd

    if not rows:
        return "_(no rows)_\n"
    cols = [c for c in _display_columns(rows, columns) if c != "command"]
    shown = []
    for r in rows:
        refs = [f"[{commands.index(c) + 1}]" for c in (r.get("command") or "").split(" ; ") if c in commands]
        shown.append({**r, "cmd": " ".join(refs)})
    if any(s["cmd"] for s in shown):
        cols.append("cmd")
    return markdown_table(pd.DataFrame(shown), cols)


def _profile_header(results: list[dict]) -> list[str]:
    """The top of the report: which profile produced the numbers, and what that means."""
    profiles = sorted({r.get("profile", "?") for r in results})
    lines = []
    if len(profiles) == 1:
        lines.append(f"**All numbers computed here come from the `{profiles[0]}` profile.**")
    else:
        lines.append("**The numbers come from several profiles: " + ", ".join(f"`{p}`" for p in profiles)
                     + "; each section names its own.**")
    lines.append("")
    for p in profiles:
        if p in PROFILE_MEANING:
            lines.append(f"- `{p}`: {PROFILE_MEANING[p]}")
    if "smoke" in profiles:
        lines += ["", "**Smoke numbers mean nothing.** They come from a few seconds of compute and only show "
                  "that the pipeline runs; run `./run_all.sh --profile quick` (or `paper` on a GPU) for numbers "
                  "worth reading."]
    return lines


def _section_figures(out_dir: Path, name: str, shown: set[str]) -> list[Path]:
    """The figures of a notebook: out_dir/figures/<number>_*.png for a results name '<number>_...' (once)."""
    m = re.match(r"^(\d+)_", name)
    if not m or m.group(1) in shown:
        return []
    shown.add(m.group(1))
    return sorted((out_dir / "figures").glob(f"{m.group(1)}_*.png"))


def build_report(out_dir: str | os.PathLike = "outputs") -> str:
    """Read out_dir/results/*.json and write out_dir/report.md and report.html; returns the markdown."""
    out_dir = Path(out_dir)
    results = load_results(out_dir)
    lines = ["# podd-kit report: Distilling Datasets Into Less Than One Image (PoDD)", ""]
    if not results:
        lines += [f"No results yet: no files in `{(out_dir / 'results').as_posix()}`. Run the notebooks "
                  "(`./run_all.sh`) first.", ""]
    else:
        lines += _profile_header(results) + [""]
        lines += [
            "How to read the tables: **ours** is this kit's test accuracy (%) with soft labels at the last "
            "evaluation step, mean \u00b1 population std over the evaluation networks; **paper** is the number "
            "printed in the paper (mean \u00b1 std over 8 networks where the paper gives one); **delta** is ours "
            "\u2212 paper in accuracy points; **cmd** points to the command that produced the row (run from the "
            "repository root). An empty cell means not run or not reported.", "",
        ]
    shown_prefixes: set[str] = set()
    for res in results:
        title = res.get("title") or res["name"]
        lines += [f"## {title}", "", f"Notebook `{res['name']}`, profile `{res.get('profile', '?')}`.", ""]
        notes = [n for n in res.get("notes") or [] if n]
        for n in notes:
            lines.append(f"- {n}")
        if notes:
            lines.append("")
        cmds = list(res.get("commands") or [])
        rows = res.get("rows") or []
        if rows:
            lines += [_table_with_commands(rows, res.get("columns"), cmds), ""]
        for caption, trows in (res.get("tables") or {}).items():
            lines += [f"**{caption}**", "", _table_with_commands(trows, None, cmds), ""]
        if cmds:
            lines += ["Commands:", ""]
            lines += [f"{i}. `{c}`" for i, c in enumerate(cmds, 1)]
            lines.append("")
        figs = _section_figures(out_dir, res["name"], shown_prefixes)
        if figs:
            lines += ["Figures (PNG; a PDF of each lies beside it):", ""]
            lines += [f"![{f.stem}](figures/{f.name})" for f in figs]
            lines.append("")
    text = "\n".join(lines).rstrip() + "\n"
    atomic_write_text(out_dir / "report.md", text)
    atomic_write_text(out_dir / "report.html", markdown_to_html(text, title="podd-kit report"))
    return text


def _inline(text: str) -> str:
    """Escape HTML, then render `code` and **bold**."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            esc = html.escape(part)
            esc = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", esc)
            esc = re.sub(r"(?<![\w*])_([^_]+)_(?![\w*])", r"<em>\1</em>", esc)
            out.append(esc)
    return "".join(out)


def _split_row(line: str) -> list[str]:
    """The cells of a markdown table row (escaped pipes kept)."""
    body = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
    cells = re.split(r"(?<!\\)\|", body)
    return [c.strip().replace("\\|", "|") for c in cells]


_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")
_LIST_ITEM = re.compile(r"^\s*(-|\d+\.)\s+")


def markdown_to_html(md: str, title: str = "report") -> str:
    """HTML for the markdown subset build_report writes: headings, paragraphs, lists, tables, code, bold."""
    out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">", f"<title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em;line-height:1.45}"
           "table{border-collapse:collapse;margin:0.5em 0 1em}td,th{border:1px solid #bbb;padding:3px 8px;"
           "font-size:0.9em}th{background:#eef}code{background:#f4f4f4;font-size:0.85em}</style>",
           "</head><body>"]
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        m = re.match(r"^(#{1,6})\s+(.*)$", line)
        if m:
            level = len(m.group(1))
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
            continue
        m = _IMAGE.match(line.strip())
        if m:
            alt, src = html.escape(m.group(1)), html.escape(m.group(2), quote=True)
            out.append(f'<figure><img src="{src}" alt="{alt}" style="max-width:100%">'
                       f"<figcaption>{alt}</figcaption></figure>")
            i += 1
            continue
        if line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            header = _split_row(block[0])
            has_rule = len(block) > 1 and re.match(r"^\|[\s\-:|]+\|?$", block[1].strip())
            body = [_split_row(b) for b in block[(2 if has_rule else 1):]]
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in header)
                       + "</tr></thead><tbody>")
            for row in body:
                out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>")
            out.append("</tbody></table>")
            continue
        if re.match(r"^\s*(-|\d+\.)\s+", line):
            ordered = bool(re.match(r"^\s*\d+\.", line))
            tag = "ol" if ordered else "ul"
            out.append(f"<{tag}>")
            while i < len(lines) and re.match(r"^\s*(-|\d+\.)\s+", lines[i]):
                item = _LIST_ITEM.sub("", lines[i])
                out.append(f"<li>{_inline(item)}</li>")
                i += 1
            out.append(f"</{tag}>")
            continue
        para = []
        while i < len(lines) and lines[i].strip() and not re.match(r"^(#{1,6}\s|\s*\||\s*(-|\d+\.)\s|!\[)",
                                                                   lines[i]):
            para.append(lines[i].strip())
            i += 1
        out.append(f"<p>{_inline(' '.join(para))}</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- notebook 07

ALGORITHM_NAMES = {"ratbptt": "RaT-BPTT", "mtt": "MTT", "dm": "DM", "dc": "DC/DSA"}
ALGORITHM_COLUMNS = ["algorithm", "synthetic set", "real batches", OURS, "reported (tiling, random)", "source",
                     "s / step", "profile"]


def algorithms_frame(results: Sequence[Mapping]):
    """Notebook 07's table: one row per (algorithm, poster or tiling, sampling), reported numbers beside.

    Each result needs 'algorithm', 'representation' ('poster' or 'tiling') and 'sampling' keys
    (experiments.distill_and_evaluate results with those added). The reported number is the method's
    own at 1 IPC with ordinary images and random batches, so it sits on the tiling + random row.
    """
    import pandas as pd

    rows = []
    for r in results:
        algo, rep, samp = r["algorithm"], r["representation"], r["sampling"]
        ours = accuracy(r)
        rep_ms = paper.ALGORITHMS_REPORTED_CIFAR10.get(algo) if r.get("dataset") == "cifar10" else None
        on_row = rep_ms is not None and rep == "tiling" and samp == "random"
        rows.append({
            "algorithm": ALGORITHM_NAMES.get(algo, algo), "synthetic set": rep,
            "real batches": "n/a (experts)" if algo == "mtt" else samp,
            OURS: fmt_pm(ours["mean"] if ours else None, ours["std"] if ours else None),
            "reported (tiling, random)": fmt_pm(rep_ms[0], rep_ms[1]) if on_row else "",
            "source": (rep_ms[2] + ", reported") if on_row else source_label(r.get("profile", "")),
            "s / step": r.get("seconds_per_step_median"), "profile": r.get("profile", ""),
            "command": r.get("command", ""), "ours_mean": ours["mean"] if ours else None,
            "ours_std": ours["std"] if ours else None, "algo_key": algo,
        })
    return pd.DataFrame(rows)


def algorithms_plot(df: Any):
    """Bars: accuracy per algorithm, tiling vs poster, random vs DREAM batches."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    algos = list(dict.fromkeys(df["algorithm"]))
    combos = [("tiling", "random"), ("poster", "random"), ("tiling", "dream"), ("poster", "dream")]
    width = 0.8 / len(combos)
    for j, (rep, samp) in enumerate(combos):
        xs, ys, es = [], [], []
        for i, a in enumerate(algos):
            sel = df[(df["algorithm"] == a) & (df["synthetic set"] == rep) & (df["real batches"] == samp)]
            if len(sel) and sel["ours_mean"].iloc[0] is not None:
                xs.append(i + (j - 1.5) * width)
                ys.append(sel["ours_mean"].iloc[0])
                es.append(sel["ours_std"].iloc[0] or 0)
        if xs:
            ax.bar(xs, ys, width, yerr=es, label=f"{rep}, {samp} batches", capsize=2)
    ax.set_xticks(range(len(algos)), algos)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("CIFAR-10, 1 IPC: algorithms on the tiling and on the poster")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
