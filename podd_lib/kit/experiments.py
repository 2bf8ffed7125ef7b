"""The run cache of the notebooks: distill + evaluate, baselines and algorithm runs, each run once.

Every result is keyed by its fully resolved config (a hash in the folder name), written
atomically to outputs/runs/... and reused unless force=True, so an interrupted `run_all.sh`
continues where it stopped and a finished one is not redone. Evaluations keep their progress in
the run's eval-progress/ folder until the result is written, so they resume too.

With $PODD_RENDER_ONLY=1 (set by run_all.sh once its executor has run the plan) nothing is
computed: a result that is not cached comes back as a placeholder marked "missing", which the
tables show as a dash, with the failed job's log when there is one (job.json in the run folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..config import Config, resolve_config, tiling_overrides
from ..errors import PoddError
from ..io import atomic_write_json
from ..safety import LOCK, folder_lock

_DATA_CACHE: dict[tuple, object] = {}
# Not hashed into run keys: bookkeeping; speed settings that change kernels and memory but not the maths;
# deterministic, which fixes the order of PyTorch's sums; and where the data lives (data_root, and
# dataset_path, an ImageFolder's absolute location: its run key keeps the path as given, so runs made
# before it was recorded keep their keys).
VOLATILE = ("progress", "device", "profile_overrides", "user_overrides", "checkpoint_every", "full_epochs",
            "experts_root", "real_chunk", "channels_last", "fused_blocks", "cpu_kernels", "backend", "compile_steps",
            "deterministic", "data_root", "dataset_path")


def config_key(cfg: Config) -> str:
    """A short hash of everything that changes a result.

    Algorithm settings left at their defaults (config.algorithm_defaults), and those the config's
    algorithm never reads, are not hashed: adding such a setting keeps every earlier RaT-BPTT
    run's key (and its cached result).
    """
    from ..config import algorithm_defaults, irrelevant_keys

    defaults, unused = algorithm_defaults(), irrelevant_keys(cfg)
    stable = {k: v for k, v in sorted(cfg.to_dict().items())
              if k not in VOLATILE and k not in unused and not (k in defaults and v == defaults[k])}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_folder(cfg: Config) -> str:
    """The run's folder name, 'ipc<IPC>-<key>': it depends on the config alone, so notebooks share runs."""
    return f"ipc{cfg.ipc:g}-{config_key(cfg)}"


Report = Callable[[str, int, int], None]  # (phase, step, total): progress of a run, for executors
RENDER_ONLY = "PODD_RENDER_ONLY"


def distill_dir(cfg: Config, out_dir: str | os.PathLike, dataset: str | None = None) -> Path:
    """The run folder of a distillation: out_dir/runs/<dataset>/ipc<IPC>-<key>."""
    return Path(out_dir) / "runs" / (dataset or cfg.dataset) / run_folder(cfg)


def random_dir(cfg: Config, ipc: float, out_dir: str | os.PathLike, dataset: str | None = None) -> Path:
    """The folder of a random-real-images baseline."""
    return Path(out_dir) / "runs" / (dataset or cfg.dataset) / f"random-ipc{ipc:g}-{config_key(cfg)}"


def full_dir(cfg: Config, epochs: float, out_dir: str | os.PathLike, dataset: str | None = None) -> Path:
    """The folder of a full-dataset baseline."""
    return Path(out_dir) / "runs" / (dataset or cfg.dataset) / f"full-{config_key(cfg)}-ep{epochs:g}"


def render_only() -> bool:
    """True when results must come from the cache only ($PODD_RENDER_ONLY=1)."""
    return os.environ.get(RENDER_ONLY, "") not in ("", "0")


def computed_on(device: str) -> dict:
    """Where and with what a result was computed: host, device, CPU, threads, kit commit, versions, SLURM job."""
    import socket

    from ..determinism import environment

    dev = {"host": socket.gethostname(), "device": device, **environment(device)}
    if os.environ.get("SLURM_JOB_ID"):
        dev["slurm_job"] = os.environ["SLURM_JOB_ID"]
    return dev


def cached_result(path: Path) -> dict | None:
    """A cached result.json, or None when absent or damaged (a damaged one is recomputed, with a warning)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        warnings.warn(f"{path} is damaged ({type(e).__name__}); the result is computed again")
        return None
    if not isinstance(data, dict):
        warnings.warn(f"{path} is not a result (not a JSON object); the result is computed again")
        return None
    return data


def missing_result(folder: Path, base: dict) -> dict:
    """The placeholder of a result that is not cached: no accuracy, and why (job.json), in its command."""
    job = folder / "job.json"
    why = "not computed"
    if job.exists():
        info = json.loads(job.read_text())
        why = f"job {info.get('state', 'failed')}: {info.get('error', '')} (log: {info.get('log', '?')})"
    return {**base, "missing": True, "why_missing": why, "run_dir": str(folder), "summary": {}, "eval": {},
            "command": f"MISSING, {why}; computes with: {base.get('command', '')}"}


def _clear_progress(folder: Path) -> None:
    """Remove the evaluation's progress folder once its result is stored."""
    import shutil

    shutil.rmtree(folder / "eval-progress", ignore_errors=True)


def device_name(device: str = "auto") -> str:
    """'auto' -> 'cuda' if available else 'cpu'."""
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def set_flags(overrides: dict | None) -> str:
    """' --set k=v ...' for a command line, each value in TOML syntax and shell-quoted."""
    import shlex

    return "".join(f" --set {shlex.quote(f'{k}={v if isinstance(v, str) else json.dumps(v)}')}"
                   for k, v in (overrides or {}).items())


def progress_enabled() -> bool:
    """tqdm bars on, except in CI."""
    return not os.environ.get("CI")


def load_real(cfg: Config, data_root: str | None = None):
    """The real data a config asks for, loaded once per process (and cached on disk by data.py)."""
    from ..data import data_source, load_for_config

    key = (data_source(cfg), str(data_root), cfg.zca, cfg.zca_reg, cfg.train_per_class, cfg.test_per_class,
           str(cfg.image_size))
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_for_config(cfg, data_root)
    return _DATA_CACHE[key]


def _eval_kwargs(cfg: Config, device: str) -> dict:
    """evaluate_distilled's protocol (from the config), device and progress, as keyword arguments."""
    from ..evaluate import protocol_from_config

    return {"protocol": protocol_from_config(cfg), "device": device, "progress": progress_enabled()}


def summarize_eval(ev: dict) -> dict:
    """Mean/std (%) at the last evaluation step, soft and hard labels."""
    out = {}
    for kind in ("soft", "hard"):
        r = ev.get(kind)
        if r:
            f = r["final"]
            out[kind] = {"step": f["step"], "mean": f["mean_pct"], "std": f["std_pct"]}
    return out


def distill_and_evaluate(
    dataset: str,
    ipc: float,
    profile: str,
    out_dir: str | os.PathLike = "outputs",
    overrides: dict | None = None,
    data_root: str | None = None,
    tag: str = "podd",
    force: bool = False,
    device: str = "auto",
    report: Report | None = None,
    hard_labels: bool = True,
) -> dict:
    """Distill a poster with a resolved config and evaluate it; cached by config hash.

    report(phase, step, total) follows progress: phase 'distill', then 'eval soft' and 'eval hard'
    (hard_labels=False skips the argmax labels' evaluation).
    """
    from ..run import geometry_from_config

    cfg = resolve_config(dataset, ipc, profile, overrides or {})
    geom0 = geometry_from_config(cfg)  # bad geometry fails before any data is read
    run_dir = distill_dir(cfg, out_dir, dataset)
    result_path = run_dir / "result.json"
    cached = None if force else cached_result(result_path)
    if cached is not None:
        return cached
    command = (f"podd distill --dataset {dataset} --ipc {ipc} --profile {profile}{set_flags(overrides)} "
               f"--out {run_dir} && podd evaluate {run_dir}")
    if render_only():
        return missing_result(run_dir, {
            "tag": tag, "dataset": dataset, "ipc": ipc, "exact_ipc": geom0.ipc, "profile": profile,
            "seed": cfg.seed, "config_key": config_key(cfg), "geometry": geom0.to_dict(), "label_kind": cfg.label_kind,
            "steps": cfg.steps, "seconds_per_step_median": None, "command": command, "config": cfg.to_dict()})
    with folder_lock(run_dir, "run folder"):
        if force and run_dir.exists():
            for entry in run_dir.iterdir():  # the lock file stays: this process holds it
                if entry.name != LOCK:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        return _distill_and_evaluate(cfg, dataset, ipc, profile, overrides, data_root, tag, device, report,
                                     hard_labels, run_dir, result_path, command)


def _distill_and_evaluate(cfg: Config, dataset: str, ipc: float, profile: str, overrides: dict | None,
                          data_root: str | None, tag: str, device: str, report: Report | None, hard_labels: bool,
                          run_dir: Path, result_path: Path, command: str) -> dict:
    """distill_and_evaluate while this process holds the run folder's lock."""
    from ..run import adapt_config_to_data, distill, geometry_from_config, load_run, order_for
    from ..evaluate import evaluate_distilled

    dev = device_name(device)
    real = load_real(cfg, data_root)
    cfg = adapt_config_to_data(cfg, real)
    geom = geometry_from_config(cfg)
    order = order_for(cfg, list(real.classes), geom)
    t0 = time.perf_counter()
    resume = (run_dir / "checkpoint.pt").exists()
    st = distill(cfg, real, order, run_dir, resume=resume, device=dev, progress=progress_enabled(),
                 on_step=None if report is None else (lambda k, n: report("distill", k, n)))
    seconds = time.perf_counter() - t0
    run = load_run(run_dir, data_root)
    ev = evaluate_distilled(run["x"], run["y"], real, **_eval_kwargs(cfg, dev), with_hard_labels=hard_labels,
                            resume_dir=run_dir / "eval-progress",
                            on_step=None if report is None else (lambda kind, k, n: report(f"eval {kind}", k, n)))
    step_secs = [r["seconds"] for r in st.history]
    result = {
        "tag": tag, "dataset": dataset, "ipc": ipc, "exact_ipc": geom.ipc, "profile": profile,
        "seed": cfg.seed, "config_key": config_key(cfg), "run_dir": str(run_dir), "geometry": geom.to_dict(),
        "label_kind": cfg.label_kind, "steps": st.step,
        "seconds_per_step_median": statistics.median(step_secs) if step_secs else None,
        "seconds_distill_this_call": seconds, "eval": ev, "summary": summarize_eval(ev), "kept": run.get("kept"),
        "command": command, "config": cfg.to_dict(), "computed_on": computed_on(dev),
    }
    atomic_write_json(result_path, result)
    _clear_progress(run_dir)
    return result


def algorithm_overrides(dataset: str, algorithm: str, representation: str, sampling: str, profile: str,
                        out_dir: str | os.PathLike, overrides: dict | None = None) -> dict:
    """The config overrides of one notebook-07 cell (the tiling's patch grid, MTT's experts folder)."""
    if representation not in ("poster", "tiling"):
        raise PoddError(f"representation must be poster or tiling, got {representation!r}")
    over = {"algorithm": algorithm, "sampling": sampling, **(overrides or {})}
    if representation == "tiling":
        over = {**tiling_overrides(dataset, profile), **over}
    if algorithm == "mtt":  # experts live beside the runs and are shared by every MTT run
        over.setdefault("experts_root", str(Path(out_dir) / "experts"))
    return over


def algorithm_run(
    dataset: str, algorithm: str, representation: str, sampling: str, profile: str,
    out_dir: str | os.PathLike = "outputs", overrides: dict | None = None, data_root: str | None = None,
    force: bool = False, device: str = "auto", ipc: float = 1.0, report: Report | None = None,
) -> dict:
    """One cell of notebook 07: an algorithm on the poster or the tiling, with random or DREAM batches."""
    over = algorithm_overrides(dataset, algorithm, representation, sampling, profile, out_dir, overrides)
    result = distill_and_evaluate(dataset, ipc, profile, out_dir, over, data_root, tag=f"{algorithm}-{representation}",
                                  force=force, device=device, report=report)
    return {**result, "algorithm": algorithm, "representation": representation, "sampling": sampling}


def random_real_baseline(
    dataset: str, ipc: float, profile: str, out_dir: str | os.PathLike = "outputs", overrides: dict | None = None,
    data_root: str | None = None, force: bool = False, device: str = "auto", report: Report | None = None,
) -> dict:
    """Random real images within the same pixel budget, under the same protocol; cached."""
    from ..evaluate import evaluate_distilled, random_real_subset

    cfg = resolve_config(dataset, ipc, profile, overrides or {})
    folder = random_dir(cfg, ipc, out_dir, dataset)
    path = folder / "result.json"
    cached = None if force else cached_result(path)
    if cached is not None:
        return cached
    command = f"podd evaluate --baseline random --dataset {dataset} --ipc {ipc} --profile {profile}{set_flags(overrides)}"
    base = {"tag": "random", "dataset": dataset, "ipc": ipc, "profile": profile, "seed": cfg.seed,
            "config_key": config_key(cfg),
            "command": command}
    if render_only():
        return missing_result(folder, base)
    with folder_lock(folder, "run folder"):
        real = load_real(cfg, data_root)
        x, y = random_real_subset(real.x_train, real.y_train, pixel_budget_ipc=ipc, seed=cfg.seed)
        dev = device_name(device)
        ev = evaluate_distilled(x, y, real, with_hard_labels=False, **_eval_kwargs(cfg, dev),
                                resume_dir=folder / "eval-progress",
                                on_step=None if report is None else (lambda kind, k, n: report(f"eval {kind}", k, n)))
        result = {**base, "n_images": int(x.shape[0]), "eval": ev, "summary": summarize_eval(ev),
                  "computed_on": computed_on(dev)}
        atomic_write_json(path, result)
        _clear_progress(folder)
    return result


def full_data_baseline(
    dataset: str, profile: str, out_dir: str | os.PathLike = "outputs", overrides: dict | None = None,
    data_root: str | None = None, force: bool = False, device: str = "auto", epochs: float | None = None,
    report: Report | None = None,
) -> dict:
    """The same network trained on the whole (profile-sliced) training set; cached."""
    from ..evaluate import full_dataset_baseline, protocol_from_config

    cfg = resolve_config(dataset, 1.0, profile, overrides or {})
    ep = epochs if epochs is not None else cfg.full_epochs
    folder = full_dir(cfg, ep, out_dir, dataset)
    path = folder / "result.json"
    cached = None if force else cached_result(path)
    if cached is not None:
        return cached
    base = {"tag": "full", "dataset": dataset, "profile": profile, "epochs": ep, "seed": cfg.seed,
            "config_key": config_key(cfg),
            "command": f"podd evaluate --baseline full --dataset {dataset} --profile {profile} --epochs {ep:g}"
            f"{set_flags(overrides)}"}
    if render_only():
        return missing_result(folder, base)
    with folder_lock(folder, "run folder"):
        real = load_real(cfg, data_root)
        dev = device_name(device)
        net = protocol_from_config(cfg)  # the same network as the distilled sets' evaluation
        r = full_dataset_baseline(
            real.x_train, real.y_train, real.x_test, real.y_test, num_classes=len(real.classes), arch=net.arch,
            epochs=ep, augmentation=cfg.real_aug, seed=cfg.seed, device=dev,
            progress=progress_enabled(), arch_kwargs=net.arch_kwargs,
            state_path=folder / "eval-progress" / "full.pt",
            on_step=None if report is None else (lambda k, n: report("train full", k, n)),
        )
        result = {**base, "eval": r, "computed_on": computed_on(dev)}
        atomic_write_json(path, result)
        _clear_progress(folder)
    return result


def save_table(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write a list of flat dicts as CSV atomically (for outputs/results)."""
    import csv
    import io

    from ..io import atomic_write_text

    if not rows:
        raise PoddError(f"no rows to write to {path}")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


# ----------------------------------------------------------------------------- other architectures

ARCHS = ("convnet", "resnet18", "vgg11", "alexnet")


def source_dir(kind: str, cfg: Config, ipc: float, out_dir: str | os.PathLike, dataset: str | None = None) -> Path:
    """The folder of the cached set an architecture is evaluated on: a distillation or a random-real baseline."""
    if kind == "distill":
        return distill_dir(cfg, out_dir, dataset)
    if kind == "random":
        return random_dir(cfg, ipc, out_dir, dataset)
    raise PoddError(f"a set to evaluate on another architecture is 'distill' or 'random', got {kind!r}")


def arch_dir(source: Path, arch: str, num_models: int, steps: list[int]) -> Path:
    """One architecture's evaluation of a cached set: <set folder>/arch/<arch>-<networks>x<steps>."""
    return Path(source) / "arch" / f"{arch}-{num_models}x{'-'.join(str(s) for s in steps)}"


def arch_command(kind: str, dataset: str, ipc: float, profile: str, overrides: dict | None, folder: Path, arch: str,
                 num_models: int, steps: list[int]) -> str:
    """The `podd evaluate` command of one architecture's evaluation."""
    flags = f" --arch {arch} --models {num_models} --eval-steps {','.join(str(s) for s in steps)}"
    if kind == "distill":
        return f"podd evaluate {folder.parent.parent}{flags} --out {folder / 'result.json'}"
    return (f"podd evaluate --baseline random --dataset {dataset} --ipc {ipc} --profile {profile}"
            f"{set_flags(overrides)}{flags} --out {folder / 'result.json'}")


def cross_arch_run(
    kind: str, dataset: str, ipc: float, profile: str, arch: str, num_models: int, steps: list[int],
    out_dir: str | os.PathLike = "outputs", overrides: dict | None = None, data_root: str | None = None,
    tag: str | None = None, force: bool = False, device: str = "auto", report: Report | None = None,
) -> dict:
    """A cached set (kind 'distill': a poster or tiling; 'random': random real images) evaluated on `arch`; cached.

    The recipe is the kit's protocol for every architecture (config's optimiser, lr, batch, augmentation,
    soft labels, seed), with num_models networks tested at `steps`. Where it is exactly the set's own
    evaluation (same architecture, networks and steps) that result is reused. The set is computed first
    if it is not cached (force applies to this evaluation only).
    """
    if arch not in ARCHS:
        raise PoddError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    steps, tag = [int(s) for s in steps], tag or ("random" if kind == "random" else "podd")
    cfg = resolve_config(dataset, ipc, profile, overrides or {})
    folder = arch_dir(source_dir(kind, cfg, ipc, out_dir, dataset), arch, int(num_models), steps)
    base = {"tag": tag, "kind": kind, "arch": arch, "dataset": dataset, "ipc": ipc, "profile": profile,
            "seed": cfg.seed, "num_models": int(num_models), "steps": steps, "config_key": config_key(cfg),
            "run_dir": str(folder),
            "command": arch_command(kind, dataset, ipc, profile, overrides, folder, arch, int(num_models), steps)}
    if (folder / "result.json").exists() and not force:  # the seed, which the folder's key holds, for older results
        return {"seed": cfg.seed, **json.loads((folder / "result.json").read_text())}
    own = arch == cfg.arch and int(num_models) == cfg.eval_models and steps == list(cfg.eval_steps)
    common = dict(data_root=data_root, device=device, report=report)
    source = (distill_and_evaluate(dataset, ipc, profile, out_dir, overrides, tag=tag, hard_labels=True, **common)
              if kind == "distill" else random_real_baseline(dataset, ipc, profile, out_dir, overrides, **common))
    if own or source.get("missing"):
        return {**base, "reused": own, "command": source.get("command", base["command"]),
                "eval": source.get("eval") or {}, "summary": source.get("summary") or {},
                **({"missing": True, "why_missing": source.get("why_missing")} if source.get("missing") else {})}
    if render_only():
        return missing_result(folder, base)
    with folder_lock(folder, "run folder"):
        return _cross_arch_locked(kind, cfg, ipc, arch, num_models, steps, data_root, device, report, source,
                                  base, folder)


def _cross_arch_locked(kind: str, cfg: Config, ipc: float, arch: str, num_models: int, steps: list[int],
                       data_root: str | None, device: str, report: Report | None, source: dict, base: dict,
                       folder: Path) -> dict:
    """cross_arch_run's evaluation while this process holds its folder's lock."""
    from ..evaluate import evaluate_distilled, random_real_subset

    real = load_real(cfg, data_root)
    if kind == "distill":
        from ..run import load_run

        run = load_run(source["run_dir"])
        x, y = run["x"], run["y"]
    else:
        x, y = random_real_subset(real.x_train, real.y_train, pixel_budget_ipc=ipc, seed=cfg.seed)
    dev = device_name(device)
    kw = _eval_kwargs(cfg, dev)
    kw["protocol"] = replace(kw["protocol"], arch=arch, num_models=int(num_models), steps=tuple(steps))
    ev = evaluate_distilled(x, y, real, **kw, with_hard_labels=False, resume_dir=folder / "eval-progress",
                            on_step=None if report is None else (lambda k, s, n: report(f"eval {arch} {k}", s, n)))
    result = {**base, "eval": ev, "summary": summarize_eval(ev), "computed_on": computed_on(dev)}
    atomic_write_json(folder / "result.json", result)
    _clear_progress(folder)
    return result
