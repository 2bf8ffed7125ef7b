"""The `podd` command: info, distill, evaluate, export.

    podd info --dataset cifar10 --ipc 0.9
    podd distill --dataset cifar10 --ipc 1 --profile quick --out runs/c10
    podd evaluate runs/c10
    podd evaluate --baseline random --dataset cifar10 --ipc 1 --set width=32 --models 3 --eval-steps 300
    podd export runs/c10 --format imagefolder
    podd distill --dataset cifar10 --ipc 1 --profile quick --algorithm dm --sampling dream --init dream --out runs/dm
    podd experts --dataset cifar10 --profile quick

Bad input stops before any compute with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import PoddError


def _device(name: str) -> str:
    """'auto' -> cuda when available, else cpu."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PoddError("--device cuda asked for, but no CUDA device is available")
    return name


def _progress() -> bool:
    """Progress bars unless running in CI."""
    return not os.environ.get("CI")


def _config(args: argparse.Namespace) -> dict:
    """Resolve dataset config + profile + --set / flag overrides."""
    from .config import parse_sets, resolve_config

    over = parse_sets(getattr(args, "set", None))
    for flag, key in (("labels", "labels"), ("order", "order"), ("patches", "patches"), ("steps", "steps"),
                      ("seed", "seed"), ("models", "eval_models"), ("algorithm", "algorithm"),
                      ("sampling", "sampling"), ("init", "init"), ("n_experts", "n_experts")):
        v = getattr(args, flag, None)
        if v is not None:
            over[key] = v
    if getattr(args, "eval_steps", None):
        over["eval_steps"] = [int(s) for s in str(args.eval_steps).split(",")]
    if getattr(args, "no_zca", False):
        over["zca"] = False
    return resolve_config(args.dataset, getattr(args, "ipc", None), args.profile, over)


def _load_real(cfg: dict, args: argparse.Namespace):
    """The real data of a config (training slice and test set)."""
    from .data import load_dataset

    return load_dataset(
        cfg["dataset"],
        data_root=args.data_root,
        zca=cfg["zca"],
        download=not getattr(args, "no_download", False),
        train_per_class=cfg["train_per_class"] or None,
        test_per_class=cfg["test_per_class"] or None,
    )


def cmd_info(args: argparse.Namespace) -> dict:
    """Geometry and label parameters as JSON, without touching data."""
    from .run import geometry_from_config
    from .poddl import PosterLabels

    cfg = _config(args)
    geom = geometry_from_config(cfg)
    identity = [[r * geom.o_x + c for c in range(geom.o_x)] for r in range(geom.o_y)]
    labels = PosterLabels(identity, geom, learned=cfg["label_kind"] == "learned", sizing=cfg["label_sizing"])
    info = {"dataset": cfg["dataset"], "ipc_requested": cfg["ipc"], "profile": cfg["profile"],
            "poster_height": geom.d_h, "poster_width": geom.d_w, "patch_grid": [geom.p_x, geom.p_y],
            "geometry": geom.to_dict(), "labels": labels.describe()}
    print(json.dumps(info, indent=2))
    return info


def cmd_distill(args: argparse.Namespace) -> None:
    """Distill a poster into --out (resumable)."""
    from .run import adapt_config_to_data, distill, geometry_from_config, order_for

    cfg = _config(args)
    device = _device(args.device)
    if cfg["n_classes"]:
        geometry_from_config(cfg)  # bad geometry fails here, before any data is read
    real = _load_real(cfg, args)
    cfg = adapt_config_to_data(cfg, real)
    geom = geometry_from_config(cfg)
    order = order_for(cfg, list(real.classes), geom)
    st = distill(cfg, real, order, args.out, resume=args.resume, device=device, progress=_progress())
    last = st.history[-1] if st.history else {}
    print(json.dumps({"out": str(args.out), "steps": st.step, "loss": last.get("loss")}))


def cmd_experts(args: argparse.Namespace) -> None:
    """Train (or extend) and cache MTT's expert trajectories for a config."""
    from .run import adapt_config_to_data, model_for
    from .algorithms.mtt import expert_settings, experts_dir, experts_root, load_or_train_experts

    cfg = _config(args)
    if args.out:
        cfg["experts_root"] = args.out
    device = _device(args.device)
    real = _load_real(cfg, args)
    cfg = adapt_config_to_data(cfg, real)
    es = expert_settings(cfg)
    folder = experts_dir(cfg, es, experts_root(cfg))
    model = model_for(cfg, real.x_train.shape[1], device)
    trajs = load_or_train_experts(model, real.x_train.to(device), real.y_train.to(device), es, folder, _progress())
    print(json.dumps({"folder": str(folder), "experts": trajs.shape[0], "epochs": trajs.shape[1] - 1,
                      "parameters": trajs.shape[2]}))


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Evaluate a run, or a baseline, under the paper's protocol; write JSON."""
    from . import evaluate as ev
    from .run import load_run

    device = _device(args.device)
    if args.run:
        run = load_run(args.run)
        cfg = dict(run["config"])
        if args.models:
            cfg["eval_models"] = args.models
        if args.eval_steps:
            cfg["eval_steps"] = [int(s) for s in args.eval_steps.split(",")]
        from .config import parse_sets

        cfg.update(parse_sets(args.set))
        real = _load_real(cfg, args)
        x, y, what = run["x"], run["y"], f"poster {args.run}"
        out = Path(args.out) if args.out else Path(args.run) / "eval.json"
    else:
        if not args.dataset:
            raise PoddError("podd evaluate needs a RUN folder or --baseline with --dataset")
        cfg = _config(args)
        real = _load_real(cfg, args)
        cfg["n_classes"] = len(real.classes)
        if args.baseline == "random":
            x, y = ev.random_real_subset(real.x_train, real.y_train, pixel_budget_ipc=cfg["ipc"], seed=cfg["seed"])
            what = f"random real images at {cfg['ipc']} IPC"
        else:
            x, y, what = None, None, "full training set"
        out = Path(args.out) if args.out else Path("outputs/results") / f"baseline_{args.baseline}_{cfg['dataset']}.json"
    arch_kwargs = {"width": cfg["width"], "depth": cfg["depth"], "norm": cfg["norm"], "pool": cfg["pool"]}
    if x is None:
        result = ev.full_dataset_baseline(
            real.x_train, real.y_train, real.x_test, real.y_test, num_classes=len(real.classes),
            arch=args.arch or cfg["arch"], arch_kwargs=arch_kwargs, epochs=args.epochs, augmentation=cfg["real_aug"],
            seed=cfg["seed"], device=device, progress=_progress(),
        )
    else:
        result = ev.evaluate_distilled(
            x, y, real, arch=args.arch or cfg["arch"], num_models=cfg["eval_models"], steps=tuple(cfg["eval_steps"]),
            bs_d=cfg["bs_d"], augmentation=cfg["syn_aug"], seed=cfg["seed"], arch_kwargs=arch_kwargs,
            device=device, progress=_progress(), with_hard_labels=bool(args.run),  # real images: already one-hot
        )
    result["what"] = what
    result["config"] = {k: cfg.get(k) for k in ("dataset", "ipc", "profile", "zca", "width", "arch")}
    ev.save_eval(result, out)
    print(summary_line(result))
    print(f"wrote {out}")


def summary_line(result: dict) -> str:
    """'soft labels: 26.31 +- 0.52 % at step 300 (3 models) | hard labels: ...' for the console."""
    parts = []
    for kind in ("soft", "hard"):
        r = result.get(kind)
        if r:
            for row in r["by_step"]:
                parts.append(f"{kind} labels, step {row['step']}: {row['mean_pct']:.2f} +- {row['std_pct']:.2f} %")
    if "final" in result and not parts:
        f = result["final"]
        parts.append(f"full training set: {f['mean_pct']:.2f} +- {f['std_pct']:.2f} % after {f['step']} steps")
    return f"{result.get('what', '')}: " + " | ".join(parts) + f" ({result.get('protocol', {}).get('num_models', '?')} models)"


def cmd_export(args: argparse.Namespace) -> None:
    """Write a run's distilled set as one .pt file or as an ImageFolder tree of PNGs."""
    from .run import load_run
    from .export import export_run

    path = export_run(load_run(args.run), args.format, Path(args.dest) if args.dest else Path(args.run) / "export")
    print(f"wrote {path}")


def cmd_plan(args: argparse.Namespace) -> None:
    """Print (and with --json write) the plan of run_all.sh for a profile and a notebook selection."""
    from .io import atomic_write_json
    from .kit import plan

    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else None
    the_plan = plan.build_plan(args.profile, args.only, datasets, args.notebooks, seconds_per_step=args.seconds_per_step)
    print(plan.plan_text(the_plan))
    if args.json:
        print(f"wrote {atomic_write_json(args.json, the_plan)}")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of `podd`."""
    p = argparse.ArgumentParser(prog="podd", description="PoDD: distill a dataset into one poster.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser, need_dataset: bool = True) -> None:
        sp.add_argument("--dataset", required=need_dataset, help="cifar10, cifar100, cub200, tinyimagenet or imagefolder:PATH")
        sp.add_argument("--ipc", type=float, default=None, help="images per class budget (default: the config's)")
        sp.add_argument("--profile", default="paper", choices=("smoke", "quick", "paper"))
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field")
        sp.add_argument("--labels", choices=("fixed", "learned", "auto"))
        sp.add_argument("--patches", metavar="PXxPY", help="patch grid, e.g. 16x6")

    sp = sub.add_parser("info", help="print the poster geometry as JSON (no data needed)")
    common(sp)
    sp.set_defaults(fn=cmd_info)

    def data(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data-root", default=None, help="data folder (default $PODD_DATA_ROOT, else ./data)")
        sp.add_argument("--no-download", action="store_true", help="never download datasets")
        sp.add_argument("--device", default="auto", help="auto, cpu or cuda")
        sp.add_argument("--no-zca", action="store_true", help="mean/std normalisation instead of ZCA")
        sp.add_argument("--keep-freed-memory", action="store_true",
                        help="CPU: glibc keeps freed memory for reuse (faster, more peak memory; same results)")

    sp = sub.add_parser("distill", help="distill a poster")
    common(sp)
    data(sp)
    sp.add_argument("--order", help="poco | poco-zigzag | paper | identity | random:SEED | file:PATH")
    sp.add_argument("--steps", type=int, help="outer steps (default: the config's)")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--out", required=True, help="run folder")
    sp.add_argument("--resume", action="store_true", help="continue the run in --out")
    sp.add_argument("--algorithm", choices=("ratbptt", "mtt", "dm", "dc"), help="distillation algorithm (default ratbptt)")
    sp.add_argument("--sampling", choices=("random", "dream"), help="real batches: random, or DREAM's representatives")
    sp.add_argument("--init", choices=("noise", "class_areas", "real", "dream"),
                    help="poster init: noise (paper, N(0,1)), class_areas (release), real images, DREAM centres")
    sp.set_defaults(fn=cmd_distill)

    sp = sub.add_parser("experts", help="train and cache MTT's expert trajectories")
    common(sp)
    data(sp)
    sp.add_argument("--n-experts", type=int, help="number of expert trajectories (default: the config's)")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--out", help="experts root folder (default $PODD_EXPERTS, else ./outputs/experts)")
    sp.set_defaults(fn=cmd_experts)

    sp = sub.add_parser("evaluate", help="evaluate a run or a baseline")
    sp.add_argument("run", nargs="?", help="run folder written by podd distill")
    common(sp, need_dataset=False)
    data(sp)
    sp.add_argument("--baseline", choices=("random", "full"), default="random")
    sp.add_argument("--models", type=int, help="number of networks (default 8)")
    sp.add_argument("--eval-steps", help="comma-separated training steps to measure at, e.g. 300,600")
    sp.add_argument("--arch", help="convnet, resnet18, vgg11, alexnet")
    sp.add_argument("--epochs", type=float, default=30, help="epochs of the full-dataset baseline")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--out", help="result JSON (default RUN/eval.json)")
    sp.set_defaults(fn=cmd_evaluate)

    sp = sub.add_parser("plan", help="list the runs the notebooks need, cached or not, with estimated times")
    sp.add_argument("--profile", default="quick", choices=("smoke", "quick", "paper"), help="(default: quick, as run_all.sh)")
    sp.add_argument("--only", help="notebook names or numbers, comma-separated (default: all)")
    sp.add_argument("--datasets", help="comma-separated datasets (default: each notebook's)")
    sp.add_argument("--notebooks", default="notebooks", help="the notebooks folder (default: notebooks)")
    sp.add_argument("--seconds-per-step", type=float, help="estimate with this outer-step time (default: measured or configs/estimates.toml)")
    sp.add_argument("--json", help="also write the plan as JSON to this file")
    sp.set_defaults(fn=cmd_plan)

    sp = sub.add_parser("export", help="export a run's patches and labels")
    sp.add_argument("run")
    sp.add_argument("--format", choices=("pt", "imagefolder"), default="pt")
    sp.add_argument("--dest", help="destination (default RUN/export)")
    sp.set_defaults(fn=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `podd` and `python -m podd_lib`."""
    args = build_parser().parse_args(argv)
    from .fast import enable_runtime

    enable_runtime()  # before the first tensor: PyTorch's allocator reads it once
    if getattr(args, "keep_freed_memory", False):
        from .fast.runtime import keep_freed_memory

        if not keep_freed_memory():
            print("podd: warning: --keep-freed-memory needs glibc; ignored", file=sys.stderr)
    try:
        args.fn(args)
    except PoddError as e:
        print(f"podd: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
