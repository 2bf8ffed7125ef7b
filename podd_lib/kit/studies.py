"""The paper's experiments as plans of cached runs: which runs a table or figure needs, printed and run.

One group per notebook. The plans print from the configs alone (no data, deterministic: the
notebooks check these printouts under nbval); the runs go through a `Session`, so every run is
cached by its config and shared between notebooks that ask for the same one.

Each notebook that makes runs has one function that says which (`NOTEBOOK_RUNS`): it takes the
session and the notebook's parameters by name and returns what the notebook needs. The notebook
calls it with a `Session`, which computes the runs; `kit.plan` calls the same function with a
`PlanSession`, which records them, so the plan of run_all.sh lists exactly the notebooks' runs.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from ..config import resolve_config, run_list, tiling_overrides
from ..errors import PoddError
from . import paper
from .session import Session

# ----------------------------------------------------------------------------- 00: quickstart


def quickstart_runs(s: Session, ipc: float = 1.0) -> list[dict]:
    """The quickstart poster at `ipc`, one run per seed."""
    return s.distill(ipc, tag="quickstart")


# ----------------------------------------------------------------------------- 01: PoCO


def print_published_orders(datasets: Sequence[str] = ("cifar10", "cifar100")) -> None:
    """The class grids printed in the paper (rows top to bottom) and the index grids they give the poster."""
    from .. import poco

    fixtures = poco.load_fixtures()
    for ds in datasets:
        entry = fixtures[ds]
        rows = entry["order"]
        print(f"{ds}: {len(rows)} rows x {len(rows[0])} columns  ({entry['source']})")
        for row in rows:
            print("  " + " | ".join(name.replace("_", " ") for name in row))
        print("  class indices:", poco.paper_order(ds, entry["classes"], len(rows), len(rows[0])))


def walks(o_y: int, o_x: int) -> dict[str, list[tuple[int, int]]]:
    """PoCO's grid walks over an o_y x o_x class grid, by style: the cells in visiting order."""
    from .. import poco

    return {style: poco.antidiagonal_order(o_y, o_x, style) for style in poco.STYLES}


def recompute_poco(s: Session, datasets: Sequence[str] = ("cifar10", "cifar100")) -> bool:
    """PoCO recomputed with CLIP beside the paper's orderings (tables, CIFAR-10 grids, results files).

    Without CLIP weights (no local copy, no internet) it prints why, records that the published
    orderings are used, and returns False.
    """
    from .. import poco
    from . import plots

    fixtures = poco.load_fixtures()
    for ds in datasets:
        classes, order = fixtures[ds]["classes"], fixtures[ds]["order"]
        o_y, o_x = len(order), len(order[0])
        try:
            dist = poco.cosine_distances(poco.clip_text_embeddings(classes))
        except PoddError as exc:
            print(f"{ds}: CLIP unavailable, PoCO cannot be recomputed here: {exc}")
            s.save_results([], title="PoCO class ordering", notes=[
                "CLIP weights were not available: PoCO was not recomputed; the published orderings of paper "
                "figures 7 and 8 are used (podd_lib/fixtures/poco_orderings.json)."])
            return False
        published = poco.paper_order(ds, classes, o_y, o_x)
        rows = []
        for style in ("paper", "release", "zigzag"):
            grid = published if style == "paper" else poco.poco_order(dist, o_y, o_x, style=style)
            label = "paper" if style == "paper" else f"PoCO, {style} walk"
            rows.append({"dataset": ds, "ordering": label, "score": poco.ordering_score(grid, dist),
                         "same as paper": grid == published, "first row": " ".join(classes[k] for k in grid[0])})
            if ds == "cifar10" and style != "paper":
                s.figure(plots.class_grid_plot([[classes[k] for k in row] for row in grid],
                                               f"CIFAR-10, {label} (ours)"), f"01_poco_cifar10_{style}")
        s.show_table(rows, list(rows[0]))
        s.save_results(rows, name=s.name + ("" if ds == "cifar10" else "_" + ds),
                       title=f"PoCO orderings recomputed with CLIP ({ds})",
                       notes=["score = 1 / summed CLIP text distance over neighbouring class pairs"])
    return True


# ----------------------------------------------------------------------------- 02 and 03: Tables 1 and 2


def table1_ipcs(s: Session, ipcs: Sequence[float] | None = None) -> dict[str, list[float]]:
    """Table 1's IPC grid per dataset: `ipcs`, else the profile's run list, else the config's poster sizes."""
    grids = {}
    for ds in s.datasets:
        grid = sorted((float(k) for k in resolve_config(ds, 1.0, s.profile).posters), reverse=True)
        chosen = ipcs if ipcs is not None else run_list(s.profile).get("table1_ipcs")
        grids[ds] = [float(v) for v in chosen] if chosen is not None else grid
    return grids


def print_table1_plan(s: Session, ipc_grid: dict[str, list[float]]) -> None:
    """Poster size, exact IPC, patch grid and labels of every Table 1 run, the RaT-BPTT tiling last."""
    from ..run import geometry_from_config

    for ds, grid in ipc_grid.items():
        for ipc in grid:
            cfg = resolve_config(ds, ipc, s.profile)
            g = geometry_from_config(cfg)
            print(f"{ds} PoDD IPC {ipc:.1f}: poster {g.d_w}x{g.d_h}, exact IPC {g.ipc:.4f}, "
                  f"patches {g.p_x}x{g.p_y} = {g.n_patches}, labels {cfg.label_kind}")
        over = tiling_overrides(ds, s.profile)
        cfg = resolve_config(ds, 1.0, s.profile, over)
        g = geometry_from_config(cfg)
        print(f"{ds} RaT-BPTT tiling: poster {g.d_w}x{g.d_h}, exact IPC {g.ipc:.4f}, patches {g.p_x}x{g.p_y}, "
              f"tiling {g.is_tiling}, labels {cfg.label_kind}, overrides {over}")


def table1_runs(s: Session, ipcs: Sequence[float] | None = None, run_full: bool = True) -> list[dict]:
    """Table 1's runs: PoDD at every IPC of `table1_ipcs`, the RaT-BPTT tiling, and (run_full) the full dataset."""
    results = []
    for ds, grid in table1_ipcs(s, ipcs).items():
        results += [r for ipc in grid for r in s.distill(ipc, dataset=ds)] + s.tiling(ds)
        results += s.full_baseline(ds) if run_full else []
    return results


def table2_runs(s: Session, run_full: bool = True) -> dict[str, dict[str, list[dict]]]:
    """Table 2's runs per dataset at 1 IPC: PoDD, the tiling, random real images, the full dataset."""
    ours = {}
    for ds in s.datasets:
        ours[ds] = {"podd": s.distill(1.0, dataset=ds), "ratbptt": s.tiling(ds), "random": s.random_baseline(1.0, ds)}
        if run_full:
            ours[ds]["full"] = s.full_baseline(ds)
    return ours


# ----------------------------------------------------------------------------- 04: figure 6


def figure6_grids(profile: str, patch_grids: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
    """The patch grids of figure 6: `patch_grids`, else the profile's run list, else the paper's seven."""
    grids = patch_grids if patch_grids is not None else run_list(profile).get("figure6_grids", paper.FIGURE6)
    return [list(g) for g in grids]


def figure6_overrides(profile: str) -> dict:
    """What figure 6's runs change from the profile: the paper's 500 outer steps under the paper profiles."""
    return {"steps": 500} if profile in ("paper", "paper-text") else {}


def print_figure6_plan(s: Session, grids: Sequence[Sequence[int]]) -> None:
    """Each patch grid's stride, whether it tiles the poster, and the outer steps."""
    from ..run import geometry_from_config

    extra = figure6_overrides(s.profile)
    for g in grids:
        cfg = resolve_config(s.dataset, 1.0, s.profile, {"patch_grid": list(g), **extra})
        geom = geometry_from_config(cfg)
        d = geom.to_dict()
        print(f"patches {geom.p_x}x{geom.p_y} = {geom.n_patches:3d}: stride {d['stride_x']:.2f} x "
              f"{d['stride_y']:.2f} px, tiling {geom.is_tiling}, steps {cfg.steps}")


def figure6_runs(s: Session, patch_grids: Sequence[Sequence[int]] | None = None) -> list[dict]:
    """One run per patch grid of `figure6_grids` and seed at 1 IPC; 5x2 (tagged 'ratbptt') and 16x6 share notebook
    02's cache."""
    from ..run import geometry_from_config

    grids, extra = figure6_grids(s.profile, patch_grids), figure6_overrides(s.profile)

    def tag(g: list[int]) -> str:
        cfg = resolve_config(s.dataset, 1.0, s.profile, {"patch_grid": g})
        return "ratbptt" if geometry_from_config(cfg).is_tiling else "podd"

    return [r for g in grids for r in s.distill(1.0, {"patch_grid": list(g), **extra}, tag=tag(list(g)))]


# ----------------------------------------------------------------------------- 05: class order


def class_orders(profile: str, n_random_orders: int | None = None) -> list[str]:
    """The paper's order and n random ones (None: the profile's run list, else 5), as --order specs."""
    n = int(n_random_orders if n_random_orders is not None else run_list(profile).get("random_orders", 5))
    return ["paper"] + [f"random:{k}" for k in range(1, n + 1)]


def class_order_overrides(profile: str) -> dict:
    """What the class-order runs change from the profile: section 5.3's 250 outer steps under the paper profiles."""
    return {"steps": 250} if profile in ("paper", "paper-text") else {}


def class_order_runs(s: Session, ipc: float = 0.3, n_random_orders: int | None = None) -> list[dict]:
    """One run per order of `class_orders` and seed at `ipc`; the paper's order is notebook 02's run where the
    configs agree."""
    extra = class_order_overrides(s.profile)
    return [r for spec in class_orders(s.profile, n_random_orders) for r in s.distill(ipc, {"order": spec, **extra})]


def print_orders(s: Session, orders: Sequence[str], ipc: float) -> None:
    """Every order's class grid, rows separated by '/'."""
    from .. import poco

    classes = poco.load_fixtures()[s.dataset]["classes"]
    o_x, o_y = resolve_config(s.dataset, ipc, s.profile).class_grid
    for spec in orders:
        grid = poco.resolve_order(spec, classes, o_y, o_x, dataset=s.dataset)
        print(f"{spec:9s} " + " / ".join(" ".join(classes[k] for k in row) for row in grid))


def class_distances(s: Session, ipc: float) -> tuple[Any, str, list[str]]:
    """(distance matrix, its name, class names): CLIP text distances, else the class-mean image stand-in."""
    from .. import poco
    from .experiments import load_real

    classes = poco.load_fixtures()[s.dataset]["classes"]
    try:
        dist = poco.cosine_distances(poco.clip_text_embeddings(classes))
        print("distance: CLIP text embeddings (as in the paper)")
        return dist, "CLIP text", classes
    except PoddError as exc:
        print(f"CLIP unavailable: {exc}")
    real = load_real(resolve_config(s.dataset, ipc, s.profile), s.data_root)
    print(f"distance: STAND-IN, cosine distance between class-mean training images in ZCA space "
          f"({real.x_train.shape[0]} training images), not the paper's CLIP distance")
    return poco.class_mean_distances(real), "class-mean image (stand-in)", classes


# ----------------------------------------------------------------------------- 06: poster semantics


def figure9_overrides(patch_grid: Sequence[int]) -> dict:
    """Figure 9's variant: one poster per class with fixed labels, started from N(0, 1) under every profile."""
    return {"per_class_posters": True, "labels": "fixed", "patch_grid": list(patch_grid), "init": "normal"}


def poster_semantics_runs(s: Session, fig9_ipc: float = 10,
                          fig9_patch_grid: Sequence[int] = (10, 10)) -> tuple[dict, dict]:
    """(figure 8's 1-IPC poster, figure 9's per-class posters at fig9_ipc), each at the first seed."""
    poster = s.distill(1.0, seeds=s.seeds[:1])[0]  # the 1-IPC PoDD run of notebooks 00, 02 and 03
    return poster, s.distill(fig9_ipc, figure9_overrides(fig9_patch_grid), tag="per-class", seeds=s.seeds[:1])[0]


# ----------------------------------------------------------------------------- 07: algorithms under posters


def algorithm_plan(algorithms: Sequence[str], representations: Sequence[str], samplings: Sequence[str] | None = None,
                   profile: str = "paper") -> list[tuple[str, str, str]]:
    """Every (algorithm, representation, sampling); MTT draws no real batches, so it has no DREAM run.

    samplings None: the profile's run list, else random and DREAM batches.
    """
    samplings = samplings if samplings is not None else run_list(profile).get("samplings", ["random", "dream"])
    return [(a, r, m) for a in algorithms for r in representations for m in samplings
            if not (a == "mtt" and m == "dream")]


def print_algorithm_plan(s: Session, plan: Sequence[tuple[str, str, str]]) -> None:
    """The poster and patch grid of every planned run."""
    from ..run import geometry_from_config

    for algo, rep, samp in plan:
        over = {"algorithm": algo, "sampling": samp, **(tiling_overrides(s.dataset, s.profile) if rep == "tiling" else {})}
        geom = geometry_from_config(resolve_config(s.dataset, 1.0, s.profile, over))
        print(f"{algo:8s} {rep:7s} {samp:7s} poster {geom.d_h}x{geom.d_w}, {geom.p_x}x{geom.p_y} = {geom.n_patches} patches")


def algorithm_runs(s: Session, algorithms: Sequence[str], representations: Sequence[str],
                   samplings: Sequence[str] | None = None, init: str | None = None) -> tuple[list[dict], dict]:
    """Every run of `algorithm_plan` at every seed of the session (cached; MTT caches its experts) and each cell's
    wall time.

    init None leaves the initialisation to the profile.
    """
    overrides = {"init": init} if init is not None else {}
    results, walls = [], {}
    for algo, rep, samp in algorithm_plan(algorithms, representations, samplings, s.profile):
        t0 = time.perf_counter()
        results += [s.algorithm(algo, rep, samp, {**overrides, "seed": seed}) for seed in s.seeds]
        walls[(algo, rep, samp)] = time.perf_counter() - t0
    return results, walls


def algorithm_notes(s: Session, init: str | None, algorithms: Sequence[str]) -> list[str]:
    """The report's notes on notebook 07: what the rows share, the reported numbers, the deviations."""
    dream = "; ".join(f"{k} {v[0]} \u00b1 {v[1]}" for k, v in paper.DREAM_REPORTED_CIFAR10.items())
    base = resolve_config(s.dataset, 1.0, s.profile)
    syn_aug, init = base.syn_aug, init or base.init
    notes = ["All rows computed here share PoDD's outer loop (Adam, clipping), init "
             f"{init!r} and evaluation protocol; equal pixels (64x160 poster) and equal outer steps per pair.",
             "Reported rows are each method's own 1-IPC CIFAR-10 number (not rerun). DREAM's Table 1 (1 IPC, "
             f"CIFAR-10): {dream}.",
             "MTT draws no real batches, so it has no DREAM row.",
             f"Augmentation of patches (and, siamese, of DM/DC real batches): syn_aug = {syn_aug!r}, PoDD's; DSA, DM "
             "and MTT use DSA's full strategy (--set syn_aug=dsa). MTT's experts do use it (expert_aug)."]
    return notes + [n for a in algorithms for n in s.deviation_notes(1.0, {"algorithm": a}, label=a)]


# ----------------------------------------------------------------------------- 08: patch explorer


def explorer_runs(s: Session, ipcs: Sequence[float] = (1.0, 0.5)) -> dict[str, dict]:
    """The posters to explore, by name ('1 IPC'): each IPC's PoDD run at seed 0 (notebooks 00 and 02's runs)."""
    return {f"{ipc:g} IPC": s.distill(float(ipc), seeds=[0])[0] for ipc in ipcs}


# ----------------------------------------------------------------------------- 09: other architectures


def cross_arch_settings(profile: str, archs: Sequence[str] | None = None, models: int | None = None,
                        steps: Sequence[int] | None = None) -> tuple[list[str], int, list[int]]:
    """Notebook 09's architectures, networks and steps: the parameters, else the profile's run list, else all four
    architectures under the profile's evaluation."""
    from .experiments import ARCHS

    rl, cfg = run_list(profile), resolve_config("cifar10", 1.0, profile)
    archs = list(archs if archs is not None else rl.get("cross_arch_archs", ARCHS))
    unknown = [a for a in archs if a not in ARCHS]
    if unknown or not archs:
        raise PoddError(f"archs must be some of {', '.join(ARCHS)}, got {archs!r}")
    return (archs, int(models if models is not None else rl.get("cross_arch_models", cfg.eval_models)),
            [int(x) for x in (steps if steps is not None else rl.get("cross_arch_steps", cfg.eval_steps))])


def cross_arch_sets(s: Session, floor_ipc: float) -> list[tuple[str, str, float, dict, str, list[int]]]:
    """Notebook 09's sets as (name, kind, IPC, overrides, tag, seeds): the 1-IPC poster and its tiling (notebooks
    02 and 03's runs) at every seed, as their claim compares them; the poster at floor_ipc (Table 1's) and random
    real images at floor_ipc's budget at the first seed."""
    if not 0 < float(floor_ipc) < 1:
        raise PoddError(f"floor_ipc must be below 1 IPC, got {floor_ipc!r}")
    every, first = list(s.seeds), list(s.seeds[:1])
    return [("poster, 1 IPC", "distill", 1.0, {}, "podd", every),
            ("tiling, 1 IPC", "distill", 1.0, tiling_overrides(s.dataset, s.profile), "ratbptt", every),
            (f"poster, {floor_ipc:g} IPC", "distill", float(floor_ipc), {}, "podd", first),
            (f"random real, {floor_ipc:g} IPC", "random", float(floor_ipc), {}, "random", first)]


def print_cross_arch_plan(s: Session, sets: Sequence[tuple], archs: Sequence[str], models: int,
                          steps: Sequence[int]) -> None:
    """Each set's size and the one evaluation recipe every architecture gets."""
    from ..run import geometry_from_config

    for name, kind, ipc, over, *_ in sets:
        cfg = resolve_config(s.dataset, ipc, s.profile, over)
        if kind == "random":
            print(f"{name:22s} {int(ipc * cfg.n_classes + 1e-9)} real training images, one-hot labels")
        else:
            g = geometry_from_config(cfg)
            print(f"{name:22s} poster {g.d_h}x{g.d_w}, {g.p_x}x{g.p_y} = {g.n_patches} patches, labels {cfg.label_kind}")
    cfg = resolve_config(s.dataset, 1.0, s.profile)
    print(f"architectures: {', '.join(archs)}; the same recipe for each: {models} fresh network{'s' if models != 1 else ''}, Adam (lr 0.001, "
          f"no schedule), batches of min({cfg.bs_d}, set size), augmentation {cfg.syn_aug!r}, soft-label "
          f"cross-entropy, {'/'.join(str(x) for x in steps)} steps, norm {cfg.norm!r} in every network, "
          f"tested on the whole test set")


def cross_arch_runs(s: Session, floor_ipc: float = 0.5, archs: Sequence[str] | None = None, models: int | None = None,
                    steps: Sequence[int] | None = None) -> list[dict]:
    """Every set of `cross_arch_sets` evaluated on every architecture of `cross_arch_settings` (cached), each result
    marked with its set's name."""
    archs, models, steps = cross_arch_settings(s.profile, archs, models, steps)
    sets = cross_arch_sets(s, floor_ipc)
    return [{**r, "representation": name} for arch in archs for name, kind, ipc, over, tag, seeds in sets
            for r in s.cross_arch(kind, ipc, arch, models, steps, over, tag, seeds=seeds)]


def cross_arch_notes(s: Session, archs: Sequence[str], models: int, steps: Sequence[int]) -> list[str]:
    """The report's notes on notebook 09: the recipe, and what the profile leaves out."""
    from .experiments import ARCHS

    left = [a for a in ARCHS if a not in archs]
    return ([f"Every architecture is trained by the kit's evaluation protocol with one recipe: {models} networks, "
             f"{'/'.join(str(x) for x in steps)} steps, Adam at lr 0.001, the config's batch, augmentation and norm; "
             "the sets are distilled with the ConvNet."]
            + ([f"Left out under profile {s.profile} to save time: {', '.join(left)} (configs/runs.toml)."] if left else [])
            + s.deviation_notes())


# ----------------------------------------------------------------------------- the run list of each notebook


# The function that makes each notebook's runs, by notebook number; the notebook calls it with its
# parameters by name, and kit.plan calls it with the notebook's parameters cell to plan them.
NOTEBOOK_RUNS: dict[str, Callable[..., Any]] = {
    "00": quickstart_runs, "02": table1_runs, "03": table2_runs, "04": figure6_runs, "05": class_order_runs,
    "06": poster_semantics_runs, "07": algorithm_runs, "08": explorer_runs, "09": cross_arch_runs}
