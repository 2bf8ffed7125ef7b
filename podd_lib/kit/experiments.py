"""The run cache of the notebooks: distill + evaluate, baselines and algorithm runs, each run once.

Every result is keyed by its fully resolved config (a hash in the folder name), written
atomically to outputs/runs/... and reused unless force=True, so an interrupted `run_all.sh`
continues where it stopped and a finished one is not redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from pathlib import Path

from ..config import resolve_config, tiling_overrides
from ..errors import PoddError
from ..io import atomic_write_json

_DATA_CACHE: dict[tuple, object] = {}
# Not hashed into run keys: bookkeeping; speed settings that change kernels and memory but not the maths;
# deterministic, which fixes the order of PyTorch's sums; and where the data lives.
VOLATILE = ("progress", "device", "profile_overrides", "user_overrides", "checkpoint_every", "full_epochs",
            "experts_root", "real_chunk", "channels_last", "fused_blocks", "cpu_kernels", "backend", "compile_steps",
            "deterministic", "data_root")


def config_key(cfg: dict) -> str:
    """A short hash of everything that changes a result.

    Algorithm settings left at their defaults (configs/algorithms.toml), and those the config's
    algorithm never reads, are not hashed: adding such a setting keeps every earlier RaT-BPTT
    run's key (and its cached result).
    """
    from ..config import algorithm_defaults, irrelevant_keys

    defaults, unused = algorithm_defaults(), irrelevant_keys(cfg)
    stable = {k: v for k, v in sorted(cfg.items())
              if k not in VOLATILE and k not in unused and not (k in defaults and v == defaults[k])}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_folder(cfg: dict) -> str:
    """The run's folder name, 'ipc<IPC>-<key>': it depends on the config alone, so notebooks share runs."""
    return f"ipc{cfg['ipc']:g}-{config_key(cfg)}"


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


def load_real(cfg: dict, data_root: str | None = None):
    """The real data a config asks for, loaded once per process (and cached on disk by data.py)."""
    from ..data import load_dataset

    key = (cfg["dataset"], str(data_root), cfg["zca"], cfg.get("zca_reg"), cfg["train_per_class"], cfg["test_per_class"])
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_dataset(
            cfg["dataset"], data_root=data_root, zca=cfg["zca"], download=True,
            train_per_class=cfg["train_per_class"] or None, test_per_class=cfg["test_per_class"] or None,
        )
    return _DATA_CACHE[key]


def _eval_kwargs(cfg: dict, device: str) -> dict:
    """evaluate_distilled keyword arguments from a config."""
    return dict(
        arch=cfg["arch"], num_models=cfg["eval_models"], steps=tuple(cfg["eval_steps"]), bs_d=cfg["bs_d"],
        augmentation=cfg["syn_aug"], seed=cfg["seed"], device=device, progress=progress_enabled(),
        arch_kwargs={"width": cfg["width"], "depth": cfg["depth"], "norm": cfg["norm"], "pool": cfg["pool"]},
    )


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
) -> dict:
    """Distill a poster with a resolved config and evaluate it; cached by config hash."""
    from ..run import adapt_config_to_data, distill, geometry_from_config, load_run, order_for
    from ..evaluate import evaluate_distilled

    cfg = resolve_config(dataset, ipc, profile, overrides or {})
    geometry_from_config(cfg)  # bad geometry fails before any data is read
    run_dir = Path(out_dir) / "runs" / dataset / run_folder(cfg)
    result_path = run_dir / "result.json"
    if result_path.exists() and not force:
        return json.loads(result_path.read_text())
    if force and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    dev = device_name(device)
    real = load_real(cfg, data_root)
    cfg = adapt_config_to_data(cfg, real)
    geom = geometry_from_config(cfg)
    order = order_for(cfg, list(real.classes), geom)
    t0 = time.perf_counter()
    resume = (run_dir / "checkpoint.pt").exists()
    st = distill(cfg, real, order, run_dir, resume=resume, device=dev, progress=progress_enabled())
    seconds = time.perf_counter() - t0
    run = load_run(run_dir)
    ev = evaluate_distilled(run["x"], run["y"], real, **_eval_kwargs(cfg, dev))
    step_secs = [r["seconds"] for r in st.history]
    result = {
        "tag": tag, "dataset": dataset, "ipc": ipc, "exact_ipc": geom.ipc, "profile": profile,
        "config_key": config_key(cfg), "run_dir": str(run_dir), "geometry": geom.to_dict(),
        "label_kind": cfg["label_kind"], "steps": st.step,
        "seconds_per_step_median": statistics.median(step_secs) if step_secs else None,
        "seconds_distill_this_call": seconds, "eval": ev, "summary": summarize_eval(ev),
        "command": f"podd distill --dataset {dataset} --ipc {ipc} --profile {profile}{set_flags(overrides)} "
        f"--out {run_dir} && podd evaluate {run_dir}",
        "config": cfg,
    }
    atomic_write_json(result_path, result)
    return result


def algorithm_run(
    dataset: str, algorithm: str, representation: str, sampling: str, profile: str,
    out_dir: str | os.PathLike = "outputs", overrides: dict | None = None, data_root: str | None = None,
    force: bool = False, device: str = "auto", ipc: float = 1.0,
) -> dict:
    """One cell of notebook 07: an algorithm on the poster or the tiling, with random or DREAM batches."""
    if representation not in ("poster", "tiling"):
        raise PoddError(f"representation must be poster or tiling, got {representation!r}")
    over = {"algorithm": algorithm, "sampling": sampling, **(overrides or {})}
    if representation == "tiling":
        over = {**tiling_overrides(dataset, profile), **over}
    if algorithm == "mtt":  # experts live beside the runs and are shared by every MTT run
        over.setdefault("experts_root", str(Path(out_dir) / "experts"))
    result = distill_and_evaluate(dataset, ipc, profile, out_dir, over, data_root, tag=f"{algorithm}-{representation}",
                                  force=force, device=device)
    return {**result, "algorithm": algorithm, "representation": representation, "sampling": sampling}


def random_real_baseline(
    dataset: str, ipc: float, profile: str, out_dir: str | os.PathLike = "outputs", overrides: dict | None = None,
    data_root: str | None = None, force: bool = False, device: str = "auto",
) -> dict:
    """Random real images within the same pixel budget, under the same protocol; cached."""
    from ..evaluate import evaluate_distilled, random_real_subset

    cfg = resolve_config(dataset, ipc, profile, overrides or {})
    path = Path(out_dir) / "runs" / dataset / f"random-ipc{ipc:g}-{config_key(cfg)}" / "result.json"
    if path.exists() and not force:
        return json.loads(path.read_text())
    real = load_real(cfg, data_root)
    x, y = random_real_subset(real.x_train, real.y_train, pixel_budget_ipc=ipc, seed=cfg["seed"])
    ev = evaluate_distilled(x, y, real, with_hard_labels=False, **_eval_kwargs(cfg, device_name(device)))
    result = {"tag": "random", "dataset": dataset, "ipc": ipc, "profile": profile, "n_images": int(x.shape[0]),
              "eval": ev, "summary": summarize_eval(ev), "config_key": config_key(cfg),
              "command": f"podd evaluate --baseline random --dataset {dataset} --ipc {ipc} --profile {profile}"
              f"{set_flags(overrides)}"}
    atomic_write_json(path, result)
    return result


def full_data_baseline(
    dataset: str, profile: str, out_dir: str | os.PathLike = "outputs", overrides: dict | None = None,
    data_root: str | None = None, force: bool = False, device: str = "auto", epochs: float | None = None,
) -> dict:
    """The same network trained on the whole (profile-sliced) training set; cached."""
    from ..evaluate import full_dataset_baseline

    cfg = resolve_config(dataset, 1.0, profile, overrides or {})
    ep = epochs if epochs is not None else cfg["full_epochs"]
    path = Path(out_dir) / "runs" / dataset / f"full-{config_key(cfg)}-ep{ep:g}" / "result.json"
    if path.exists() and not force:
        return json.loads(path.read_text())
    real = load_real(cfg, data_root)
    r = full_dataset_baseline(
        real.x_train, real.y_train, real.x_test, real.y_test, num_classes=len(real.classes), arch=cfg["arch"],
        epochs=ep, augmentation=cfg["real_aug"], seed=cfg["seed"], device=device_name(device),
        progress=progress_enabled(),
        arch_kwargs={"width": cfg["width"], "depth": cfg["depth"], "norm": cfg["norm"], "pool": cfg["pool"]},
    )
    result = {"tag": "full", "dataset": dataset, "profile": profile, "epochs": ep, "eval": r,
              "config_key": config_key(cfg),
              "command": f"podd evaluate --baseline full --dataset {dataset} --profile {profile} --epochs {ep:g}"
              f"{set_flags(overrides)}"}
    atomic_write_json(path, result)
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
