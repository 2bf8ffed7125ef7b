"""The `podd` command: info, distill, evaluate, export.

    podd info --dataset cifar10 --ipc 0.9
    podd distill --dataset cifar10 --ipc 1 --profile quick --out runs/c10
    podd evaluate runs/c10
    podd evaluate --baseline random --dataset cifar10 --ipc 1 --set width=32 --models 3 --eval-steps 300
    podd export runs/c10 --format imagefolder
    podd distill --dataset cifar10 --ipc 1 --profile quick --algorithm dm --sampling dream --init dream --out runs/dm
    podd experts --dataset cifar10 --profile quick

Bad input stops before any data is read with one line on stderr and exit status 2. The default
profile is `quick`, as in run_all.sh.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import PoddError

if TYPE_CHECKING:
    from .config import Config


DEFAULT_PROFILE = "quick"  # the same as run_all.sh


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print 'podd <cmd>: error: ...' as one line and exit 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


class Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' unless the help text already states the default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        """The help text with its default, once."""
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not text:
            return text
        return super()._get_help_string(action)


def count(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def counts(text: str) -> list[int]:
    """An argparse type: comma-separated integers >= 1 (e.g. 300,600)."""
    return [count(t.strip()) for t in text.split(",")]


def positive(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return v


SEED_MAX = 2**31 - 1  # every generator the kit seeds (torch, numpy, derived per-model seeds) takes it


def seed_value(text: str) -> int:
    """An argparse type: an integer seed from 0 to SEED_MAX."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"seed must be from 0 to {SEED_MAX}, got {text[:30]}")
    return v


def device_name(text: str) -> str:
    """An argparse type: auto, cpu, mps, cuda or cuda:N."""
    from .validate import DEVICE

    if not DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use auto, cpu or cuda (cuda:N)")
    return text


def _device(name: str) -> str:
    """'auto' -> cuda when available, else cpu."""
    if name == "cpu":
        return name
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PoddError("--device cuda asked for, but no CUDA device is available")
    return name


def _progress() -> bool:
    """Progress bars unless running in CI."""
    return not os.environ.get("CI")


def _config(args: argparse.Namespace) -> Config:
    """Resolve dataset config + profile + --set / flag overrides."""
    from .config import parse_sets, read_config_file, resolve_config

    over = read_config_file(args.config) if getattr(args, "config", None) else {}
    over.update(parse_sets(getattr(args, "set", None)))
    for flag, key in (("labels", "labels"), ("order", "order"), ("patches", "patches"), ("steps", "steps"),
                      ("seed", "seed"), ("models", "eval_models"), ("algorithm", "algorithm"),
                      ("sampling", "sampling"), ("init", "init"), ("n_experts", "n_experts")):
        v = getattr(args, flag, None)
        if v is not None:
            over[key] = v
    if getattr(args, "eval_steps", None):
        over["eval_steps"] = list(args.eval_steps)
    if getattr(args, "no_zca", False):
        over["zca"] = False
    cfg = resolve_config(args.dataset, getattr(args, "ipc", None), args.profile or DEFAULT_PROFILE, over)
    _check_seed(cfg)
    return cfg


def _check_seed(cfg: Config) -> None:
    """The config's seed (from --set or a TOML file too) within 0..SEED_MAX."""
    seed = cfg.seed
    if isinstance(seed, int) and not 0 <= seed <= SEED_MAX:
        raise PoddError(f"seed must be from 0 to {SEED_MAX}, got {str(seed)[:30]}")


def _data_root(args: argparse.Namespace, cfg: Config | None = None) -> str:
    """--data-root, else the run's recorded data root, else $PODD_DATA_ROOT, else ./data (absolute)."""
    from .data import resolve_data_root

    given = args.data_root or (cfg.data_root if cfg is not None else None) or None
    return str(resolve_data_root(given).absolute())


def _load_real(cfg: Config, args: argparse.Namespace):
    """The real data of a config (training slice and test set)."""
    from .data import load_for_config

    return load_for_config(cfg, _data_root(args, cfg), download=not getattr(args, "no_download", False))


def cmd_info(args: argparse.Namespace) -> dict:
    """Geometry and label parameters as JSON, without touching data."""
    cfg = _config(args)
    from .run import geometry_from_config
    from .poddl import PosterLabels

    geom = geometry_from_config(cfg)
    identity = [[r * geom.o_x + c for c in range(geom.o_x)] for r in range(geom.o_y)]
    labels = PosterLabels(identity, geom, learned=cfg.label_kind == "learned", sizing=cfg.label_sizing,
                             fixed_form=cfg.fixed_labels_form)
    info = {"dataset": cfg.dataset, "ipc_requested": cfg.ipc, "profile": cfg.profile,
            "poster_height": geom.d_h, "poster_width": geom.d_w, "patch_grid": [geom.p_x, geom.p_y],
            "geometry": geom.to_dict(), "labels": labels.describe()}
    print(json.dumps(info, indent=2))
    return info


def _check_before_data(cfg: Config) -> None:
    """Geometry (ImageFolder: class folders listed, no image decoded), memory and a class order file, before any data is read."""
    from .run import geometry_from_config

    classes = _known_classes(cfg)
    if not cfg.n_classes and classes is not None:
        from .config import with_data

        cfg = with_data(cfg, len(classes))
    if cfg.n_classes:
        geom = geometry_from_config(cfg)
        order = str(cfg.order)
        if order.startswith("file:") and order[len("file:"):] and not cfg.per_class_posters:
            from .poco import check_order_file

            check_order_file(order[len("file:"):], cfg.n_classes, geom.o_y, geom.o_x, classes)


def _known_classes(cfg: Config) -> list[str] | None:
    """The class names of a config's dataset without reading data (ImageFolder: its folders), or None when only the data names them."""
    from .data import CIFAR10_CLASSES, data_source, imagefolder_classes

    if cfg.dataset.startswith("imagefolder:"):
        return imagefolder_classes(data_source(cfg))
    return list(CIFAR10_CLASSES) if cfg.dataset == "cifar10" else None


def cmd_distill(args: argparse.Namespace) -> None:
    """Distill a poster into --out (resumable)."""
    from .safety import check_run_out, folder_lock, read_run_config, resume_changes

    cfg = _config(args)
    device = _device(args.device)
    out = Path(args.out)
    check_run_out(out, args.resume)
    cfg = cfg.replace(data_root=_data_root(args))
    if args.resume:
        resume_changes(read_run_config(out / "config.json"), cfg.to_dict(), before_data=True)
    _check_before_data(cfg)
    with folder_lock(out):
        _distill_locked(args, cfg, device, out)


def _distill_locked(args: argparse.Namespace, cfg: Config, device: str, out: Path) -> None:
    """cmd_distill while this process holds the run folder's lock."""
    from .run import adapt_config_to_data, distill, geometry_from_config, order_for

    real = _load_real(cfg, args)
    cfg = adapt_config_to_data(cfg, real)
    geom = geometry_from_config(cfg)
    order = order_for(cfg, list(real.classes), geom)
    st = distill(cfg, real, order, out, resume=args.resume, device=device, progress=_progress())
    last = st.history[-1] if st.history else {}
    print(json.dumps({"out": str(args.out), "steps": st.step, "loss": last.get("loss")}))


def cmd_experts(args: argparse.Namespace) -> None:
    """Train (or extend) and cache MTT's expert trajectories for a config."""
    from .run import adapt_config_to_data, model_for
    from .algorithms.mtt import expert_settings, experts_dir, experts_root, load_or_train_experts

    cfg = _config(args)
    if args.out:
        cfg = cfg.replace(experts_root=args.out)
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
    from dataclasses import replace

    from . import evaluate as ev
    from .run import load_run

    device = _device(args.device)
    if args.run:
        from .config import Config, parse_sets, read_config_file

        _refuse_run_flags(args)
        run = load_run(args.run, args.data_root)
        over = read_config_file(args.config) if args.config else {}
        over.update(parse_sets(args.set))
        if args.models:
            over["eval_models"] = args.models
        if args.eval_steps:
            over["eval_steps"] = list(args.eval_steps)
        # the run's record holds the backend resolved for its device; the evaluation resolves its own
        cfg = Config.from_dict({**run["config"].to_dict(), "backend": "auto", **over}, over)
        _check_seed(cfg)
        out = Path(args.out) if args.out else Path(args.run) / "eval.json"
        _check_out_file(out)
        ev.check_models_fit_config(cfg, cfg.eval_models, device, int(run["x"].shape[1]))
        keeps_progress = _keeps_progress(Path(args.run))
        real = _load_real(cfg, args)
        x, y, what = run["x"], run["y"], f"poster {args.run}"
    else:
        if not args.dataset:
            raise PoddError("podd evaluate needs a RUN folder or --baseline with --dataset")
        args.baseline = args.baseline or "random"
        cfg = _config(args)
        name = cfg.dataset.replace(":", "_").replace("/", "_")
        out = (Path(args.out) if args.out
               else Path("outputs") / "baselines" / cfg.profile / f"baseline_{args.baseline}_{name}.json")
        _check_out_file(out)
        if args.baseline == "random":
            ev.check_models_fit_config(cfg, cfg.eval_models, device)
        if cfg.dataset.startswith("imagefolder:"):
            from .data import data_source, imagefolder_classes

            imagefolder_classes(data_source(cfg))
        from .config import with_data

        real = _load_real(cfg, args)
        cfg = with_data(cfg, len(real.classes), real.image_size)
        if args.baseline == "random":
            x, y = ev.random_real_subset(real.x_train, real.y_train, pixel_budget_ipc=cfg.ipc, seed=cfg.seed)
            what = f"random real images at {cfg.ipc} IPC"
        else:
            x, y, what = None, None, "full training set"
    protocol = replace(ev.protocol_from_config(cfg), arch=args.arch or cfg.arch)
    if x is None:
        result = ev.full_dataset_baseline(
            real.x_train, real.y_train, real.x_test, real.y_test, num_classes=len(real.classes),
            arch=protocol.arch, arch_kwargs=protocol.arch_kwargs,
            epochs=args.epochs if args.epochs is not None else cfg.full_epochs, augmentation=cfg.real_aug,
            seed=cfg.seed, device=device, progress=_progress(),
        )
        _write_result(result, what, cfg, out)
    elif not args.run:
        result = ev.evaluate_distilled(x, y, real, protocol, device=device, progress=_progress(),
                                       with_hard_labels=False)  # real images: already one-hot
        _write_result(result, what, cfg, out)
    elif not keeps_progress:
        result = ev.evaluate_distilled(x, y, real, protocol, device=device, progress=_progress())
        _write_result(result, what, cfg, out)
    else:
        from .safety import folder_lock

        run_dir = Path(args.run)
        with folder_lock(run_dir, "run folder"):
            progress = run_dir / PROGRESS / f"evaluate-{ev.progress_key(protocol, x, y, True, _data_identity(cfg))}"
            result = ev.evaluate_distilled(x, y, real, protocol, device=device, progress=_progress(),
                                           resume_dir=progress)
            _write_result(result, what, cfg, out)
            _clear_progress(progress)


PROGRESS = "eval-progress"  # in a run folder: finished parts of evaluations, kept until the result is written


def _keeps_progress(run_dir: Path) -> bool:
    """Whether evaluating a run keeps its progress in the run folder: it can be written (else a note says it cannot).

    Before any data is read, a writer holding the run folder fails here in one line naming it.
    """
    from .safety import check_unlocked

    if not os.access(run_dir, os.W_OK | os.X_OK):
        print(f"podd: note: {run_dir} is read-only; this evaluation keeps no progress there "
              f"(interrupted, it starts again)", file=sys.stderr)
        return False
    check_unlocked(run_dir, "run folder")
    return True


def _data_identity(cfg: Config) -> dict:
    """The settings that fix a run's test data and preprocessing (part of an evaluation's progress key)."""
    keys = ("dataset", "zca", "zca_reg", "train_per_class", "test_per_class", "image_size")
    return {k: getattr(cfg, k) for k in keys}


def _clear_progress(progress: Path) -> None:
    """Remove an evaluation's progress once its result is written (and the progress folder when it is left empty)."""
    import contextlib
    import shutil

    shutil.rmtree(progress, ignore_errors=True)
    with contextlib.suppress(OSError):
        progress.parent.rmdir()


def _write_result(result: dict, what: str, cfg: Config, out: Path) -> None:
    """Record what was evaluated and with which settings, write the result to out, print its summary."""
    from . import evaluate as ev

    result["what"] = what
    result["config"] = {k: getattr(cfg, k) for k in ("dataset", "ipc", "profile", "zca", "width", "arch")}
    try:
        ev.save_eval(result, out)
    except OSError:
        print(json.dumps(result))  # the finished evaluation is kept on stdout; main() names the failure in one line
        raise
    print(summary_line(result))
    print(f"wrote {out}")


EVAL_KEYS = ("what", "config", "protocol")  # every evaluation result the kit writes has these


RUN_FIXED = (("dataset", "--dataset"), ("ipc", "--ipc"), ("profile", "--profile"), ("labels", "--labels"),
             ("patches", "--patches"), ("no_zca", "--no-zca"), ("seed", "--seed"), ("baseline", "--baseline"),
             ("epochs", "--epochs"))  # a run's own settings, or baselines' flags


def _refuse_run_flags(args: argparse.Namespace) -> None:
    """Evaluating a run: refuse flags that a run fixes or that only baselines read (instead of ignoring them)."""
    given = [flag for name, flag in RUN_FIXED if getattr(args, name, None) not in (None, False)]
    if given:
        raise PoddError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply when evaluating a run "
                        f"(the run's own settings are used; --set and --config change evaluation settings); "
                        f"drop {'it' if len(given) == 1 else 'them'}")


def _check_out_file(out: Path) -> None:
    """An output file path: not a folder, new or the kit's own result, its folder writable (before any data is read)."""
    from .safety import _check_writable, check_own_json

    if out.is_dir():
        raise PoddError(f"--out {out} is a folder; give a file name for the JSON result")
    check_own_json(out, "--out", EVAL_KEYS)
    _check_writable(out, "--out")


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
        parts.append(f"{f['mean_pct']:.2f} +- {f['std_pct']:.2f} % after {f['step']} steps")
    return f"{result.get('what', '')}: " + " | ".join(parts) + f" ({result.get('protocol', {}).get('num_models', '?')} models)"


def cmd_export(args: argparse.Namespace) -> None:
    """Write a run's distilled set as one .pt file or as an ImageFolder tree of PNGs."""
    from .run import load_run
    from .export import export_run
    from .safety import check_export_dest, default_export_dest

    run_dir = Path(args.run)
    dest = Path(args.dest) if args.dest else default_export_dest(run_dir, args.format)
    if run_dir.is_dir():
        check_export_dest(run_dir, dest, args.format)
    path = export_run(load_run(run_dir, args.data_root), args.format, dest, run_dir)
    print(f"wrote {path}")


PROFILE_CHOICES = ("smoke", "quick", "cpu-long", "paper", "paper-text")  # config.PROFILES, without importing torch for --help


PLAN_KEYS = ("profile", "notebooks", "runs", "basis")  # every plan the kit writes has these


def cmd_plan(args: argparse.Namespace) -> None:
    """Print (and with --json write) the plan of run_all.sh for a profile and a notebook selection."""
    from .io import atomic_write_json
    from .kit import plan

    if args.json:
        from .safety import _check_writable, check_own_json

        if Path(args.json).is_dir():
            raise PoddError(f"--json {args.json} is a folder; give a file name for the plan")
        check_own_json(Path(args.json), "--json", PLAN_KEYS)
        _check_writable(Path(args.json), "--json")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else None
    the_plan = plan.build_plan(args.profile, args.only, datasets, args.notebooks, seconds_per_step=args.seconds_per_step)
    print(plan.plan_text(the_plan))
    if args.json:
        print(f"wrote {atomic_write_json(args.json, the_plan)}")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of `podd`."""
    from . import __version__
    from .config import ALGORITHMS

    p = Parser(prog="podd", description="PoDD: distill a dataset into one poster.", formatter_class=Help)
    p.add_argument("--version", action="version", version=f"podd-kit {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)

    def add_parser(name: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, formatter_class=Help, **kw)

    def common(sp: argparse.ArgumentParser, need_dataset: bool = True) -> None:
        sp.add_argument("--dataset", required=need_dataset,
                        help="cifar10, cifar100, cub200, tinyimagenet or imagefolder:PATH"
                        + ("" if need_dataset else " (default: none; baselines need it)"))
        sp.add_argument("--ipc", type=float, default=None, help="images per class budget (default: the config's)")
        sp.add_argument("--profile", default=DEFAULT_PROFILE, choices=PROFILE_CHOICES,
                        help=f"settings profile (default: {DEFAULT_PROFILE}, as in run_all.sh); paper: the authors' "
                        "release; paper-text: the paper's text; quick, smoke: reduced; cpu-long: quick at width 128 "
                        "with learned labels")
        sp.add_argument("--config", metavar="FILE.toml",
                        help="TOML file of config overrides, key = value (default: none; --set wins over it)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override any config field, repeatable (default: none)")
        sp.add_argument("--labels", choices=("fixed", "learned", "auto"), help="PoDDL labels (default: the config's)")
        sp.add_argument("--patches", metavar="PXxPY", help="patch grid, e.g. 16x6 (default: the config's)")

    sp = add_parser("info", help="print the poster geometry as JSON (no data needed)")
    common(sp)
    sp.set_defaults(fn=cmd_info)

    def data(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data-root", default=None, help="data folder (default $PODD_DATA_ROOT, else ./data)")
        sp.add_argument("--no-download", action="store_true", help="never download datasets (default: download)")
        sp.add_argument("--device", default="auto", type=device_name, help="auto, cpu or cuda (cuda:N)")
        sp.add_argument("--no-zca", action="store_true", help="mean/std normalisation instead of ZCA (default: ZCA)")
        sp.add_argument("--keep-freed-memory", action="store_true",
                        help="CPU: glibc keeps freed memory for reuse (faster, more peak memory; same results; "
                             "default: off)")

    sp = add_parser("distill", help="distill a poster")
    common(sp)
    data(sp)
    sp.add_argument("--order", help="poco | poco-zigzag | paper | identity | random:SEED | file:PATH "
                                    "(default: the config's)")
    sp.add_argument("--steps", type=count, help="outer steps, >= 1 (default: the config's)")
    sp.add_argument("--seed", type=seed_value, help="random seed (default: the config's, 0)")
    sp.add_argument("--out", required=True, help="run folder: new, empty, or a run of the kit (default: none, required)")
    sp.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its checkpoint (default: start a new run)")
    sp.add_argument("--algorithm", choices=ALGORITHMS, help="distillation algorithm (default: ratbptt)")
    sp.add_argument("--sampling", choices=("random", "dream"),
                    help="real batches: random, or DREAM's representatives (default: random)")
    sp.add_argument("--init", choices=("noise", "class_areas", "real", "dream"),
                    help="poster init: noise (paper, N(0,1)), class_areas (release), real images, DREAM centres "
                         "(default: the config's, noise)")
    sp.set_defaults(fn=cmd_distill)

    sp = add_parser("experts", help="train and cache MTT's expert trajectories")
    common(sp)
    data(sp)
    sp.add_argument("--n-experts", type=count, help="number of expert trajectories (default: the config's)")
    sp.add_argument("--seed", type=seed_value, help="random seed (default: the config's, 0)")
    sp.add_argument("--out", help="experts root folder (default $PODD_EXPERTS, else ./outputs/experts)")
    sp.set_defaults(fn=cmd_experts)

    sp = add_parser("evaluate", help="evaluate a run or a baseline")
    sp.add_argument("run", nargs="?", help="run folder written by podd distill (default: none; evaluate a baseline)")
    common(sp, need_dataset=False)
    data(sp)
    sp.add_argument("--baseline", choices=("random", "full"), default=None,
                    help="baseline without a RUN (default: random)")
    sp.add_argument("--models", type=count, help="number of networks, >= 1 (default: the config's; quick 4, paper 8)")
    sp.add_argument("--eval-steps", type=counts,
                    help="comma-separated training steps to measure at, e.g. 300,600 (default: the config's)")
    sp.add_argument("--arch", choices=("convnet", "resnet18", "vgg11", "alexnet"),
                    help="network to train (default: the config's, convnet)")
    sp.add_argument("--epochs", type=positive, default=None,
                    help="epochs of the full-dataset baseline (default: the profile's full_epochs)")
    sp.add_argument("--seed", type=seed_value, help="random seed (default: the config's, 0)")
    sp.add_argument("--out", help="result JSON (default: RUN/eval.json; baselines: "
                                  "outputs/baselines/PROFILE/baseline_KIND_DATASET.json)")
    sp.set_defaults(fn=cmd_evaluate, profile=None)  # None: not given (a run keeps its own profile)

    sp = add_parser("plan", help="list the runs the notebooks need, cached or not, with estimated times")
    sp.add_argument("--profile", default="quick", choices=PROFILE_CHOICES,
                    help="settings profile (default: quick, as run_all.sh)")
    sp.add_argument("--only", help="notebook names or numbers, comma-separated (default: all)")
    sp.add_argument("--datasets", help="comma-separated datasets (default: each notebook's)")
    sp.add_argument("--notebooks", default="notebooks", help="the notebooks folder (default: notebooks)")
    sp.add_argument("--seconds-per-step", type=positive, help="estimate with this outer-step time (default: measured or configs/estimates.toml)")
    sp.add_argument("--json", help="also write the plan as JSON to this file (default: print only)")
    sp.set_defaults(fn=cmd_plan)

    sp = add_parser("export", help="export a run's patches and labels")
    sp.add_argument("run", help="run folder written by podd distill")
    sp.add_argument("--format", choices=("pt", "imagefolder"), default="pt", help="one .pt file or PNGs per class")
    sp.add_argument("--dest", help="a new or empty folder, or a previous export of this run (default: RUN/export "
                                   "for pt, RUN/export-imagefolder for imagefolder; pt also takes FILE.pt)")
    sp.add_argument("--data-root", default=None,
                    help="data folder, for a run that keeps its ZCA whitening by reference (default: the run's own, "
                         "else $PODD_DATA_ROOT, else ./data)")
    sp.set_defaults(fn=cmd_export)
    return p


MACHINE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


def _resume_hint(args: argparse.Namespace) -> str:
    """How to continue after Ctrl-C (a distillation resumes from its last checkpoint)."""
    if args.cmd == "distill" and (Path(args.out) / "checkpoint.pt").is_file():
        return f"the last checkpoint is in {args.out}: run the same command with --resume to continue"
    if args.cmd == "distill":
        return "no checkpoint was written yet: run the same command again"
    progress = Path(args.run) / PROGRESS if args.cmd == "evaluate" and args.run else None
    if progress is not None and any(progress.glob("evaluate-*/*")):
        return f"what was finished is kept in {progress}: run the same command again to continue from it"
    return "every file is written atomically, nothing is half-written: run the same command again"


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler or `kill`): end like Ctrl-C, with the hint how to continue."""


def _on_sigterm(signum: int, frame: object) -> None:
    """Turn SIGTERM into Terminated in the main thread."""
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `podd` and `python -m podd_lib`."""
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):  # `podd` alone: the commands, not just an error
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
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
    except KeyboardInterrupt:
        print(f"podd: interrupted; {_resume_hint(args)}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"podd: terminated; {_resume_hint(args)}", file=sys.stderr)
        return 143
    except OSError as e:
        if e.errno not in MACHINE_ERRORS:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"podd: error: {e.strerror or e}{where}; {_resume_hint(args)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
