"""The plan of a `run_all.sh` call: every run its notebooks need, from the configs alone, with what is cached.

Each notebook's runs are listed by the function the notebook itself calls (kit.studies.NOTEBOOK_RUNS),
given the notebook's parameters cell and dataset and a session that records the runs instead of
running them. A run in the plan is plain data: its kind (distill, random or full baseline), dataset,
IPC, overrides, tag, run key, folder, the command that computes it, whether its result is cached,
and an estimated time. The estimate is outer steps x seconds per outer step + evaluation steps x
models x seconds per model step; the rates come from cached results of the same profile where there
are any, else from configs/estimates.toml, and the plan says which.
"""

from __future__ import annotations

import ast
import inspect
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..config import TRAIN_SIZES, Config, profile_out_dir, profile_seeds, resolve_config
from ..errors import PoddError
from . import experiments, studies
from .session import Session

FULL_BATCH = 256  # the full-dataset baseline's batch (evaluate.full_dataset_baseline's default)


# ----------------------------------------------------------------------------- notebooks


def notebook_names(notebooks_dir: str | os.PathLike) -> list[str]:
    """The notebooks run_all.sh runs, in order: notebooks/<digits>_*.ipynb."""
    return sorted(p.stem for p in Path(notebooks_dir).glob("[0-9]*.ipynb"))


def select_notebooks(names: Sequence[str], only: str | None) -> list[str]:
    """The notebooks `--only` selects (full names or their number prefixes); PoddError if it selects none."""
    if not only:
        return list(names)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    chosen = [n for n in names if n in wanted or n.split("_")[0] in wanted]
    unknown = [w for w in wanted if not any(n == w or n.split("_")[0] == w for n in names)]
    if unknown or not chosen:
        raise PoddError(f"--only {only!r} matches no notebook ({', '.join(unknown) or only}); "
                        f"notebooks: {', '.join(n.split('_')[0] for n in names)}")
    return chosen


def code_cells(path: str | os.PathLike) -> list[str]:
    """The source of each code cell of a notebook."""
    cells = json.loads(Path(path).read_text())["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]


def notebook_params(path: str | os.PathLike) -> dict[str, Any]:
    """The literal defaults of a notebook's first code cell (its papermill parameters): name -> value."""
    params = {}
    for node in ast.parse(code_cells(path)[0]).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                params[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue  # os.environ.get(...): run_all.sh passes these
    return params


def fixed_dataset(path: str | os.PathLike) -> str | None:
    """The dataset a notebook fixes with `kit.setup(..., dataset="cifar10")` (a paper figure), else None."""
    for source in code_cells(path):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "setup":
                return next((ast.literal_eval(k.value) for k in node.keywords if k.arg == "dataset"), None)
    return None


def plan_notebook_runs(s: Session, runs: Callable[..., Any], params: dict[str, Any]) -> None:
    """Call a notebook's run-list function with the session and, by name, the notebook parameters it takes."""
    names = list(inspect.signature(runs).parameters)[1:]
    runs(s, **{k: params[k] for k in names if k in params})


# ----------------------------------------------------------------------------- recording session


def train_size(cfg: Config, kind: str) -> int:
    """How many images the run's evaluation networks train on: the patches, the random images, or a full batch."""
    if kind == "full":
        return FULL_BATCH
    if kind == "random":
        return max(1, round(cfg.ipc)) * cfg.n_classes
    from ..run import geometry_from_config

    g = geometry_from_config(cfg)
    return g.n_patches * (cfg.n_classes if cfg.per_class_posters else 1)


def inner_batch(bs_d: int, n: int) -> int:
    """The patches in one inner step of the distillation: bs_d, or all of them when fewer."""
    return min(bs_d, n)


def _spec(kind: str, folder: Path, base: dict, cfg: Config, notebook: str, root: str) -> dict:
    """One planned run as plain data (folder as the notebooks see it, from root)."""
    n = train_size(cfg, kind) if cfg.n_classes else 0
    return {"kind": kind, "folder": str(folder), "result": str(folder / "result.json"), **base,
            "train_size": n, "inner_batch": inner_batch(cfg.bs_d, n) if kind == "distill" else 0,
            "config_key": experiments.config_key(cfg),
            "cached": experiments.cached_result(Path(root) / folder / "result.json") is not None,
            "steps": cfg.steps if kind == "distill" else 0, "algorithm": cfg.algorithm,
            "eval_models": cfg.eval_models, "eval_steps": cfg.eval_steps[-1],
            "scorings": -(-cfg.steps // cfg.keep_every) if kind == "distill" and cfg.keep == "best_train" else 0,
            "notebooks": [notebook]}


@dataclass
class PlanSession(Session):
    """A Session whose runs are recorded as plan entries, not run; each returns its cached result or a placeholder."""

    notebook: str = ""
    root: str = "notebooks"  # the notebooks' working directory, from which out_dir is seen
    runs: list[dict] = field(default_factory=list)

    def _add(self, spec: dict) -> dict:
        """Record a run; its result stands in for the notebook's (cached, else a placeholder)."""
        self.runs.append(spec)
        cached = experiments.cached_result(Path(self.root) / spec["result"]) if spec["cached"] else None
        return cached if cached is not None else {**spec, "summary": {}, "eval": {}}

    def _distill_spec(self, dataset: str, ipc: float, overrides: dict, tag: str) -> dict:
        """A distill-and-evaluate run."""
        cfg = resolve_config(dataset, ipc, self.profile, overrides)
        command = (f"podd distill --dataset {dataset} --ipc {ipc} --profile {self.profile}"
                   f"{experiments.set_flags(overrides)} --out {experiments.distill_dir(cfg, self.out_dir, dataset)}")
        base = {"dataset": dataset, "ipc": ipc, "profile": self.profile, "overrides": overrides, "tag": tag,
                "command": command + f" && podd evaluate {experiments.distill_dir(cfg, self.out_dir, dataset)}"}
        return _spec("distill", experiments.distill_dir(cfg, self.out_dir, dataset), base, cfg, self.notebook, self.root)

    def distill(self, ipc: float, overrides: dict | None = None, tag: str = "podd", dataset: str | None = None,
                seeds: Sequence[int] | None = None) -> list[dict]:
        """Record one distill-and-evaluate run per seed."""
        ds = dataset or self.dataset
        return [self._add(self._distill_spec(ds, ipc, {**(overrides or {}), "seed": seed}, tag))
                for seed in (seeds or self.seeds)]

    def random_baseline(self, ipc: float = 1.0, dataset: str | None = None,
                        seeds: Sequence[int] | None = None) -> list[dict]:
        """Record the random-real-images baseline, one per seed."""
        ds, out = dataset or self.dataset, []
        for seed in seeds or self.seeds:
            over = {"seed": seed}
            cfg = resolve_config(ds, ipc, self.profile, over)
            base = {"dataset": ds, "ipc": ipc, "profile": self.profile, "overrides": over, "tag": "random",
                    "command": f"podd evaluate --baseline random --dataset {ds} --ipc {ipc} --profile {self.profile}"
                    f"{experiments.set_flags(over)}"}
            spec = _spec("random", experiments.random_dir(cfg, ipc, self.out_dir, ds), base, cfg, self.notebook, self.root)
            out.append(self._add({**spec, "eval_phases": 1}))
        return out

    def full_baseline(self, dataset: str | None = None) -> list[dict]:
        """Record the full-dataset baseline, at the first seed: no claim compares it."""
        ds, out = dataset or self.dataset, []
        for seed in self.seeds[:1]:
            over = {"seed": seed}
            cfg = resolve_config(ds, 1.0, self.profile, over)
            ep = cfg.full_epochs
            n_train = cfg.train_per_class * cfg.n_classes if cfg.train_per_class else TRAIN_SIZES.get(ds, 0)
            base = {"dataset": ds, "ipc": 1.0, "profile": self.profile, "overrides": over, "tag": "full",
                    "command": f"podd evaluate --baseline full --dataset {ds} --profile {self.profile} --epochs {ep:g}"
                    f"{experiments.set_flags(over)}"}
            spec = _spec("full", experiments.full_dir(cfg, ep, self.out_dir, ds), base, cfg, self.notebook, self.root)
            steps = math.ceil(ep * max(1, n_train // FULL_BATCH))
            out.append(self._add({**spec, "eval_models": 1, "eval_steps": steps, "eval_phases": 1}))
        return out

    def algorithm(self, algorithm: str, representation: str, sampling: str, overrides: dict | None = None,
                  dataset: str | None = None) -> dict:
        """Record one notebook-07 cell (a distill-and-evaluate run with the algorithm's overrides)."""
        ds = dataset or self.dataset
        over = experiments.algorithm_overrides(ds, algorithm, representation, sampling, self.profile, self.out_dir,
                                               overrides)
        return self._add(self._distill_spec(ds, 1.0, over, f"{algorithm}-{representation}"))

    def cross_arch(self, kind: str, ipc: float, arch: str, num_models: int, steps: Sequence[int],
                   overrides: dict | None = None, tag: str | None = None, dataset: str | None = None,
                   seeds: Sequence[int] | None = None) -> list[dict]:
        """Record the set (a distillation or random real images) and its evaluation on arch, one per seed.

        An evaluation that is the set's own (same architecture, networks and steps) is the set's result.
        """
        ds, out, steps = dataset or self.dataset, [], [int(x) for x in steps]
        tag = tag or ("random" if kind == "random" else "podd")
        seeds = list(seeds or self.seeds)
        sources = (self.random_baseline(ipc, ds, seeds) if kind == "random" else
                   [self.distill(ipc, overrides, tag, ds, seeds=[seed])[0] for seed in seeds])
        for seed, source in zip(seeds, sources):
            over = {**(overrides or {}), "seed": seed}
            cfg = resolve_config(ds, ipc, self.profile, over)
            if arch == cfg.arch and num_models == cfg.eval_models and steps == list(cfg.eval_steps):
                out.append(source)
                continue
            folder = experiments.arch_dir(experiments.source_dir(kind, cfg, ipc, self.out_dir, ds), arch,
                                          num_models, steps)
            base = {"dataset": ds, "ipc": ipc, "profile": self.profile, "overrides": over, "tag": tag, "arch": arch,
                    "source_kind": kind, "eval_step_list": steps, "command": experiments.arch_command(
                        kind, ds, ipc, self.profile, over, folder, arch, num_models, steps)}
            spec = _spec("arch", folder, base, cfg, self.notebook, self.root)
            out.append(self._add({**spec, "train_size": train_size(cfg, kind), "eval_models": num_models,
                                  "eval_steps": steps[-1], "eval_phases": 1}))
        return out


# ----------------------------------------------------------------------------- estimates


def default_rates(profile: str) -> dict:
    """configs/estimates.toml's rates for a profile: seconds per outer step and per model step, and their basis."""
    text = resources.files("podd_lib").joinpath("configs/estimates.toml").read_text()
    table = tomllib.loads(text)
    if profile not in table:
        raise PoddError(f"configs/estimates.toml has no [{profile}] table")
    return table[profile]


def measured_rates(out_dir: str | os.PathLike, profile: str) -> dict:
    """Medians over cached results of one profile: seconds per outer step (by algorithm) and per model step."""
    step: dict[str, list[tuple[int, float]]] = {}
    model_step: list[tuple[int, float]] = []
    for path in Path(out_dir, "runs").glob("*/*/result.json"):
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if r.get("profile") != profile:
            continue
        recorded, n = r.get("config") or {}, _result_size(r)
        if r.get("seconds_per_step_median"):
            m = inner_batch(recorded["bs_d"], n) if recorded.get("bs_d") and n else 0
            step.setdefault(recorded.get("algorithm", "ratbptt"), []).append((m, float(r["seconds_per_step_median"])))
        soft = (r.get("eval") or {}).get("soft") or {}
        if soft.get("seconds") and soft.get("num_models") and soft.get("by_step"):
            model_step.append((n, soft["seconds"] / (soft["num_models"] * soft["by_step"][-1]["step"])))
    arch: dict[str, list[tuple[int, float]]] = {}
    for path in Path(out_dir, "runs").glob("*/*/arch/*/result.json"):
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        soft = (r.get("eval") or {}).get("soft") or {}
        n = ((r.get("eval") or {}).get("protocol") or {}).get("n_syn", 0)
        if r.get("profile") == profile and soft.get("seconds") and soft.get("num_models") and soft.get("by_step") and n:
            arch.setdefault(r["arch"], []).append((n, soft["seconds"] / (soft["num_models"] * soft["by_step"][-1]["step"])))
    return {"arch_points": arch, "step": {a: statistics.median(v for _, v in pts) for a, pts in step.items()},
            "step_points": {a: [p for p in pts if p[0]] for a, pts in step.items()},
            "model_step": statistics.median(v for _, v in model_step) if model_step else None,
            "model_step_points": [p for p in model_step if p[0]],
            "n_step": sum(len(v) for v in step.values()), "n_model_step": len(model_step)}


def _result_size(r: dict) -> int:
    """The training-set size of a cached result (0 when it does not say)."""
    if r.get("geometry"):
        recorded = r.get("config") or {}  # a per-class poster's geometry is one class's: count every class's patches
        return r["geometry"]["n_patches"] * (recorded.get("n_classes", 1) if recorded.get("per_class_posters") else 1)
    if r.get("n_images"):
        return int(r["n_images"])
    return FULL_BATCH if r.get("epochs") else 0


def interpolate(points: Sequence[tuple[int, float]], x: int) -> float | None:
    """The rate at size x, linear between the measured sizes around it (medians per size), the nearest outside them."""
    by_size: dict[int, list[float]] = {}
    for size, rate in points:
        by_size.setdefault(size, []).append(rate)
    xs = sorted(by_size)
    if not xs or not x:
        return None
    ys = [statistics.median(by_size[k]) for k in xs]
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = next(i for i, k in enumerate(xs) if k >= x)
    return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - xs[i - 1]) / (xs[i] - xs[i - 1])


def estimate(run: dict, rates: dict) -> float:
    """Seconds a run should take: outer steps x s/step + (evaluation phases + the poster's scorings) x steps x models x s/model step.

    Both rates follow the run's size where cached runs measured it: s/step by the inner batch, s/model step
    by the training set (the 5x2 tiling's step costs a fraction of the 16x6 poster's).
    """
    sps = (interpolate(rates.get("step_points", {}).get(run["algorithm"], []), run.get("inner_batch", 0))
           or rates["step"].get(run["algorithm"], rates["step_default"]))
    mps = interpolate(rates.get("model_step_points", []), run.get("train_size", 0)) or rates["model_step"]
    if run.get("kind") == "arch":  # another architecture: its own measured rate, else the ConvNet's times its factor
        mps = (interpolate(rates.get("arch_points", {}).get(run["arch"], []), run.get("train_size", 0))
               or mps * rates.get("arch_factor", {}).get(run["arch"], 1.0))
    phases = run.get("eval_phases", 2) + run.get("scorings", 0)
    return run["steps"] * sps + phases * run["eval_steps"] * run["eval_models"] * mps


def rates_for(out_dir: str | os.PathLike, profile: str, seconds_per_step: float | None = None) -> dict:
    """The rates an estimate uses, measured where cached results allow, with a one-line basis each."""
    d, m = default_rates(profile), measured_rates(out_dir, profile)
    if seconds_per_step is not None:
        step, step_default = {}, float(seconds_per_step)
        step_basis = f"{seconds_per_step:g} s per outer step, given on the command line"
    elif m["step"]:
        step, step_default = m["step"], statistics.median(m["step"].values())
        step_basis = (f"measured: s/step of {m['n_step']} cached {profile} results, by algorithm and inner batch "
                      "(linear between measured batches), else the algorithm's median "
                      + ", ".join(f"{a} {v:.3g}" for a, v in sorted(m["step"].items())))
    else:
        step, step_default = {}, float(d["seconds_per_step"])
        step_basis = f"default {d['seconds_per_step']:g} s per outer step ({d['step_basis']})"
    if m["model_step"] is not None:
        model_step = m["model_step"]
        model_basis = (f"measured: s per model step of {m['n_model_step']} cached {profile} evaluations, by training-set "
                       f"size (linear between measured sizes), else their median {model_step:.3g}")
    else:
        model_step = float(d["seconds_per_model_step"])
        model_basis = f"default {model_step:g} s per model step ({d['model_step_basis']})"
    points = m["step_points"] if seconds_per_step is None else {}
    factors = d.get("arch_factor", {})
    arch_basis = ("other architectures: s per model step measured for " + (", ".join(sorted(m["arch_points"])) or "none")
                  + "; else the ConvNet's times " + ", ".join(f"{a} {f:g}" for a, f in factors.items())
                  + f" ({d.get('arch_basis', 'no basis given')})") if factors else None
    return {"step": step, "step_default": step_default, "model_step": model_step, "step_points": points,
            "model_step_points": m["model_step_points"], "arch_points": m["arch_points"], "arch_factor": factors,
            "basis": [step_basis, model_basis] + ([arch_basis] if arch_basis else [])}


# ----------------------------------------------------------------------------- the plan


def build_plan(profile: str, only: str | None = None, datasets: Sequence[str] | None = None,
               notebooks_dir: str | os.PathLike = "notebooks", out_dir: str = "../outputs",
               seconds_per_step: float | None = None) -> dict:
    """The plan: notebooks, their runs (deduplicated, in first-use order), cached or not, estimated seconds.

    out_dir is seen from notebooks_dir, as the notebooks see it (run_all.sh passes ../outputs), so
    folders and commands are the ones the notebooks record.
    """
    resolve_config("cifar10", 1.0, profile)  # an unknown profile fails here, in one line
    names = select_notebooks(notebook_names(notebooks_dir), only)
    out = profile_out_dir(out_dir, profile)
    base = Path(notebooks_dir)
    runs: dict[str, dict] = {}
    per_nb: dict[str, list[str]] = {}
    for name in names:
        params = notebook_params(base / f"{name}.ipynb")
        nb_datasets = list(datasets) if datasets else list(params.get("datasets") or ["cifar10"])
        num = name.split("_")[0]
        s = PlanSession(name, profile, out, "", "auto", False, nb_datasets,
                        profile_seeds(profile, params.get("seeds", [0])),
                        fixed_dataset(base / f"{name}.ipynb") or nb_datasets[0], 1, notebook=name, root=str(base))
        if num in studies.NOTEBOOK_RUNS:
            plan_notebook_runs(s, studies.NOTEBOOK_RUNS[num], params)
        per_nb[name] = []
        for r in s.runs:
            if r["folder"] in runs:
                if name not in runs[r["folder"]]["notebooks"]:
                    runs[r["folder"]]["notebooks"].append(name)
            else:
                runs[r["folder"]] = r
            if r["folder"] not in per_nb[name]:
                per_nb[name].append(r["folder"])
    rates = rates_for(base / out, profile, seconds_per_step)
    for r in runs.values():
        r["estimate_s"] = 0.0 if r["cached"] else estimate(r, rates)
        r["full_estimate_s"] = estimate(r, rates)
    notebooks = [{"name": n, "runs": per_nb[n],
                  "estimate_s": sum(runs[f]["estimate_s"] for f in per_nb[n] if runs[f]["notebooks"][0] == n),
                  "full_estimate_s": sum(runs[f]["full_estimate_s"] for f in per_nb[n])} for n in names]
    return {"profile": profile, "out_dir": out, "notebooks": notebooks, "runs": list(runs.values()),
            "basis": rates["basis"], "estimate_s": sum(r["estimate_s"] for r in runs.values()),
            "full_estimate_s": sum(r["full_estimate_s"] for r in runs.values())}


def fmt_seconds(sec: float) -> str:
    """'45 s', '12 min', '3.4 h', '27.0 d'."""
    if sec < 90:
        return f"{sec:.0f} s"
    if sec < 5400:
        return f"{sec / 60:.0f} min"
    if sec < 2 * 86400:
        return f"{sec / 3600:.1f} h"
    return f"{sec / 86400:.1f} d"


def run_label(run: dict) -> str:
    """A run in a few words: 'cifar10 ipc0.5 podd seed 0' (+ what its overrides change)."""
    over = {k: v for k, v in (run.get("overrides") or {}).items() if k not in ("seed", "experts_root")}
    extra = " ".join(f"{k}={v}" for k, v in over.items() if k not in ("patch_grid",) or run["tag"] != "ratbptt")
    on = f" on {run['arch']}" if run.get("kind") == "arch" else ""
    return f"{run['dataset']} ipc{run['ipc']:g} {run['tag']}{on}" + (f" {extra}" if extra else "")


def plan_text(plan: dict) -> str:
    """The plan as the lines run_all.sh prints: one per notebook, one per run, the totals and their basis."""
    runs = {r["folder"]: r for r in plan["runs"]}
    cached = sum(r["cached"] for r in plan["runs"])
    lines = [f"plan: profile {plan['profile']}, {len(plan['notebooks'])} notebooks, {len(runs)} runs "
             f"({cached} cached, {len(runs) - cached} to compute), estimated {fmt_seconds(plan['estimate_s'])} "
             f"(all runs from scratch: {fmt_seconds(plan['full_estimate_s'])})"]
    for nb in plan["notebooks"]:
        todo = sum(not runs[f]["cached"] for f in nb["runs"])
        lines.append(f"  {nb['name']}: {len(nb['runs'])} runs, {todo} to compute, "
                     f"~{fmt_seconds(nb['estimate_s'])} (from scratch {fmt_seconds(nb['full_estimate_s'])})")
        for f in nb["runs"]:
            r = runs[f]
            state = "cached" if r["cached"] else f"~{fmt_seconds(r['estimate_s'])}"
            shared = "" if r["notebooks"][0] == nb["name"] else f" (from {r['notebooks'][0].split('_')[0]})"
            lines.append(f"    {'.' if r['cached'] else '*'} {run_label(r):48s} {r['kind']:7s} "
                         f"{r['steps']:>6} steps  {state}{shared}  {r['folder']}")
    lines += [f"  basis: {b}" for b in plan["basis"]]
    return "\n".join(lines)
