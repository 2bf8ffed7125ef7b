"""Run Algorithm 1 of the paper from a config: build its parts, loop with checkpoints and resume, write the run.

    P ~ N(0, 1); O <- PoCO(C); Y <- PoDDL(O, p)
    for each distillation step: P, Y <- ALGORITHM(D, patches and labels of (P, Y))

The config names the algorithm (`podd_lib.algorithms.REGISTRY`; PoDD's is RaT-BPTT).

A run folder holds config.json (fully resolved), checkpoint.pt (poster, Y, both optimiser
states, EMA, RNG state, step, metrics), and at the end poster.pt, labels.pt, poster.png and
metrics.csv. Every file is written atomically; `resume=True` continues from checkpoint.pt and
gives the same poster as an uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .config import Config, with_data
from .errors import PoddError
from .io import atomic_torch_save, atomic_write_json, atomic_write_text
from .algorithms import builder
from .algorithms.base import (EpochSampler, OuterSettings, OuterState, RealSampler, make_outer_state, outer_step,
                              reinit_params)
from .algorithms.ratbptt import RatBpttSettings
from .fast import resolve_backend
from .fast.compiled import compile_applies
from .models import make_model, set_backend
from .poddl import PosterLabels
from .poster import PosterGeometry, init_from_images, init_poster, make_geometry
from .safety import (check_name, check_run_out, check_text, folder_lock, load_torch_file, read_run_config,
                     resume_changes, start_run)
from .validate import check_patches_fit
from .determinism import deterministic_mode
from . import selection, whitening

METRIC_FIELDS = ("step", "loss", "grad_norm", "curriculum", "seconds")


def read_config(path: str | os.PathLike) -> Config:
    """A run's config.json as a Config (a run made before a setting existed holds no such key)."""
    return Config.from_dict(read_run_config(Path(path)), where=f"{path}: ")


def geometry_from_config(cfg: Config) -> PosterGeometry:
    """The poster geometry a config asks for (validated; no data needed)."""
    if not cfg.n_classes:
        raise PoddError(f"the class count of {cfg.dataset} is only known from its data")
    size = tuple(cfg.poster_size) if cfg.poster_size else None
    if cfg.per_class_posters:  # figure 9: one single-class poster of `ipc` images per class
        if cfg.label_kind != "fixed":
            raise PoddError("per-class posters carry fixed one-hot labels; set labels=fixed")
        g = make_geometry(cfg.ipc, 1, tuple(cfg.image_size), (1, 1), tuple(cfg.patch_grid), size)
    else:
        g = make_geometry(cfg.ipc, cfg.n_classes, tuple(cfg.image_size), tuple(cfg.class_grid),
                          tuple(cfg.patch_grid), size)
    check_patches_fit(g.n_patches * (cfg.n_classes if cfg.per_class_posters else 1), 3, g.h, g.w,
                      g.d_w, g.d_h, g.p_x, g.p_y)
    return g


def apply_backend(cfg: Config, device: str | torch.device = "cpu") -> Config:
    """The config with its speed backend resolved for device; "reference" turns the fast path's keys off.

    compile_steps becomes "none" where it compiles nothing (not CUDA, or not RaT-BPTT), so config.json says what ran.
    """
    changes: dict = {"backend": resolve_backend(cfg.backend, str(device), cfg.conv_dtype, cfg.autocast)}
    if changes["backend"] == "reference":
        changes.update(fused_blocks=False, channels_last=False, cpu_kernels=False)
    if cfg.compile_steps != "none" and not (compile_applies(cfg.compile_steps, device) and cfg.algorithm == "ratbptt"):
        changes["compile_steps"] = "none"
    return cfg.replace(**changes)


def settings_from_config(cfg: Config) -> RatBpttSettings:
    """The RaT-BPTT settings of a config."""
    keys = ("window", "totwindow", "minwindow", "inner_lr", "lr", "bs_d", "bs", "syn_aug", "real_aug")
    return RatBpttSettings(**{k: getattr(cfg, k) for k in keys}, fixed_curriculum=cfg.fixed_curriculum,
                           real_chunk=cfg.real_chunk, channels_last=cfg.channels_last, autocast=cfg.autocast,
                           compile_steps=cfg.compile_steps, curriculum_draw=cfg.curriculum_draw)


def adapt_config_to_data(cfg: Config, real) -> Config:
    """The config with the class count and image size of its data (ImageFolder), checked to agree."""
    return with_data(cfg, len(real.classes), real.image_size)


CONV_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}  # config name -> the fused blocks' conv dtype


def model_for(cfg: Config, channels: int, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The network of a config, on device."""
    model = make_model(
        cfg.arch,
        channels=channels,
        num_classes=cfg.n_classes,
        im_size=tuple(cfg.image_size),
        width=cfg.width,
        depth=cfg.depth,
        norm=cfg.norm,
        pool=cfg.pool,
    ).to(device)
    cfg = apply_backend(cfg, device)
    set_backend(model, cfg.backend == "fast")
    if hasattr(model, "fused_blocks") and cfg.backend == "fast":
        model.fused_blocks = bool(cfg.fused_blocks)
        model.conv_dtype = CONV_DTYPES[cfg.conv_dtype]
        model.cpu_kernels = bool(cfg.cpu_kernels)
    return model


@dataclass
class Problem:
    """Everything fixed for the whole distillation: geometry, order, labels, network, settings, algorithm."""

    geom: PosterGeometry
    order: list[list[int]]
    labels: PosterLabels
    model: torch.nn.Module
    settings: RatBpttSettings
    algo: object = None
    outer: OuterSettings | None = None


def order_for(cfg: Config, classes: list[str], geom: PosterGeometry) -> list[list[int]]:
    """The class grid O: the config's ordering; per-class posters are simply one class each, in order."""
    if cfg.per_class_posters:
        return [[k] for k in range(len(classes))]
    from .poco import resolve_order

    return resolve_order(cfg.order, list(classes), geom.o_y, geom.o_x, dataset=cfg.dataset)


def make_algorithm(cfg: Config, model: torch.nn.Module, s: RatBpttSettings, real=None, device: str = "cpu",
                   progress: bool = False):
    """The config's distillation algorithm (MTT loads or trains its experts from the real data)."""
    return builder(cfg.algorithm)(cfg, model, s, real, device, progress)


def make_sampler(cfg: Config, x_train: torch.Tensor, y_train: torch.Tensor, n_classes: int) -> RealSampler:
    """Random or epoch-walk real batches, or DREAM's; per-class sampling checks every class has images now."""
    if cfg.sampling == "dream":
        from .algorithms.dream import DreamSampler

        sampler = DreamSampler(x_train, y_train, n_classes, cfg.dream_interval, cfg.dream_pool, cfg.dream_iters)
    elif cfg.real_batches == "epochs":  # the release's walk over shuffled epochs
        sampler = EpochSampler(x_train, y_train, n_classes, int(cfg.seed))
    else:
        sampler = RealSampler(x_train, y_train, n_classes)
    if cfg.sampling == "dream" or cfg.algorithm in ("dm", "dc"):
        sampler.by_class  # noqa: B018 -- a class without images fails here, before any compute
    return sampler


def build_problem(cfg: Config, order: list[list[int]], channels: int, device: str = "cpu", real=None,
                  progress: bool = False) -> Problem:
    """Assemble the fixed parts of a distillation."""
    cfg = apply_backend(cfg, device)
    geom = geometry_from_config(cfg)
    if cfg.per_class_posters:
        labels = PosterLabels.per_class(cfg.n_classes, geom)
    else:
        labels = PosterLabels(order, geom, learned=cfg.label_kind == "learned", sizing=cfg.label_sizing,
                             fixed_form=cfg.fixed_labels_form)
    if labels.table is not None:
        labels.table = labels.table.to(device)
    model = model_for(cfg, channels, device)
    s = settings_from_config(cfg)
    outer = OuterSettings(clip_ema=s.clip_ema, clip_factor=s.clip_factor, clip_order=cfg.clip_order)
    algo = make_algorithm(cfg, model, s, real, device, progress) if (real is not None or cfg.algorithm != "mtt") else None
    return Problem(geom, order, labels, model, s, algo, outer)


def initial_poster(cfg: Config, pb: Problem, channels: int, real=None) -> torch.Tensor:
    """The poster before distillation: N(0, 1) (paper), class areas (release), real or DREAM images."""
    seed = int(cfg.seed)
    if cfg.per_class_posters:  # init=normal only (validate.RULES)
        g = torch.Generator().manual_seed(seed)
        return torch.randn(cfg.n_classes, channels, pb.geom.d_h, pb.geom.d_w, generator=g)
    if cfg.init in ("real", "dream"):
        if real is None:
            raise PoddError(f"init {cfg.init!r} needs the real data")
        gen = torch.Generator().manual_seed(seed)
        x, y = real.x_train, real.y_train
        if cfg.init == "real":  # one random training image per class
            picks = [int(ix[torch.randint(ix.numel(), (1,), generator=gen)])
                     for ix in (torch.nonzero(y == c).flatten() for c in range(pb.geom.n_classes))]
            images = x[torch.tensor(picks)]
        else:  # DREAM: the image nearest each class's centre in a fresh network's features
            from .algorithms.base import embed
            from .algorithms.dream import class_representatives

            dev = next(pb.model.parameters()).device
            params = {k: p.detach() for k, p in reinit_params(pb.model, gen).items()}
            with torch.no_grad():
                images = class_representatives(x, y, pb.geom.n_classes,
                                               lambda b: embed(pb.model, params, b.to(dev)).cpu(), gen,
                                               cfg.dream_iters)
        return init_from_images(pb.geom, images.cpu(), pb.order)
    return init_poster(pb.geom, channels, cfg.init, pb.order, generator=torch.Generator().manual_seed(seed))


def initial_state(cfg: Config, pb: Problem, channels: int, device: str = "cpu", real=None) -> OuterState:
    """A fresh poster, Y and outer optimiser (and the algorithm's own leaves), all seeded by cfg.seed."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(cfg.seed))
    poster = initial_poster(cfg, pb, channels, real)
    Y = pb.labels.Y.clone() if pb.labels.learned else None
    extras = pb.algo.extra_leaves() if pb.algo is not None else []
    return make_outer_state(poster.to(device), None if Y is None else Y.to(device), pb.settings.lr, gen, extras)


POSTER_LIMIT = 1e6  # a distilled poster lives in the data's preprocessed scale (|values| of order 10)


def check_diverged(st: OuterState) -> None:
    """Stop (FloatingPointError) once the poster or Y holds a non-finite value or one beyond POSTER_LIMIT."""
    for name, t in (("poster", st.poster), ("labels Y", st.Y)):
        if t is None:
            continue
        peak = float(t.detach().abs().max())
        if not peak <= POSTER_LIMIT:  # NaN fails this too
            raise FloatingPointError(f"the {name} diverged (largest |value| {peak:.3g} after outer step {st.step}; "
                                     f"a smaller lr may help)")


def checkpoint_dict(st: OuterState) -> dict:
    """Everything needed to resume exactly."""
    return {
        "step": st.step,
        "poster": st.poster.detach().cpu(),
        "Y": None if st.Y is None else st.Y.detach().cpu(),
        "opt": st.opt.state_dict(),
        "ema": st.ema,
        "gen_state": st.gen.get_state(),
        "gen_device": str(st.gen.device),
        "history": list(st.history),
        "extras": {k: v.detach().cpu() for k, v in st.extras.items()},
        "config": dict(st.config) if getattr(st, "config", None) else None,
    }


def restore_state(st: OuterState, ck: dict) -> OuterState:
    """Load a checkpoint into a freshly built state (same config)."""
    with torch.no_grad():
        st.poster.copy_(ck["poster"].to(st.poster.device))
        if st.Y is not None:
            st.Y.copy_(ck["Y"].to(st.Y.device))
        for k, v in ck.get("extras", {}).items():
            st.extras[k].copy_(v.to(st.extras[k].device))
    st.opt.load_state_dict(ck["opt"])
    st.ema, st.step, st.history = ck["ema"], ck["step"], list(ck["history"])
    st.gen.set_state(ck["gen_state"])
    return st


def metrics_csv(history: list[dict]) -> str:
    """The per-step metrics as CSV text."""
    buf = io.StringIO()
    extra = [k for row in history for k in row if k not in METRIC_FIELDS]
    fields = list(METRIC_FIELDS) + list(dict.fromkeys(extra))  # an algorithm's own columns (MTT: syn_lr, ...)
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(history)
    return buf.getvalue()


def distill(
    cfg: Config,
    real,
    order: list[list[int]],
    out: str | os.PathLike,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    stop_after: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> OuterState:
    """Run (or resume) PoDD for cfg.steps outer steps; stop_after simulates an interruption.

    With cfg.deterministic (default) the run is in PyTorch's deterministic mode, and the flags are
    restored when it returns (`determinism.deterministic_mode`). on_step(step, steps) is called after
    every outer step (progress reporting).
    """
    check_run_out(Path(out), resume)
    with folder_lock(Path(out)), deterministic_mode(cfg.deterministic, device):
        return _distill(cfg, real, order, out, resume, device, progress, stop_after, on_step)


def _distill(cfg: Config, real, order: list[list[int]], out: str | os.PathLike, resume: bool, device: str,
             progress: bool, stop_after: int | None, on_step: Callable[[int, int], None] | None) -> OuterState:
    """`distill` under the flags it has set."""
    out = Path(out)
    ck_path = out / "checkpoint.pt"
    cfg = apply_backend(cfg, device)  # config.json records the backend that ran
    check_run_out(out, resume)
    record = {**cfg.to_dict(), "order_grid": order}
    ck = None
    if resume:
        ck = load_torch_file(ck_path, ("step", "poster", "opt", "history"))
        old = ck.get("config") or read_run_config(out / "config.json")
        changed = resume_changes(old, record)
        if cfg.steps < ck["step"]:
            raise PoddError(f"cannot resume: {ck_path} is at step {ck['step']}, beyond steps={cfg.steps}")
        resumes = list(old.get("resumes", []))
        if changed:
            resumes.append({"step": ck["step"], "changed": changed})
        record = {**record, "resumes": resumes} if resumes else record
    channels = real.x_train.shape[1]
    pb = build_problem(cfg, order, channels, device, real, progress)
    st = initial_state(cfg, pb, channels, device, real)
    if ck is not None:
        st = restore_state(st, ck)
    st.config = record
    start_run(out)
    if ck is None:
        (out / selection.KEPT).unlink(missing_ok=True)  # a kept poster of an attempt that never checkpointed
    atomic_write_json(out / "config.json", {**record, "geometry": pb.geom.to_dict()})
    x_train, y_train = real.x_train.to(device), real.y_train.to(device)
    sampler = make_sampler(cfg, x_train, y_train, cfg.n_classes)  # per-class posters: geom has 1 class
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=st.step, desc="distill", disable=not progress or bool(os.environ.get("CI")))
    last_good = st.step if ck_path.exists() else None
    while st.step < cfg.steps:
        t0 = time.perf_counter()
        try:
            row = outer_step(st, pb.algo, pb.labels, pb.geom, sampler, pb.outer)
            check_diverged(st)
        except FloatingPointError as e:
            where = f"{ck_path} (step {last_good})" if last_good is not None else "none was written yet"
            raise PoddError(f"{e}; stopped; last good checkpoint: {where}") from None
        row["seconds"] = time.perf_counter() - t0
        if selection.due(cfg, st.step):  # keep = "best_train": score the poster on the training set
            score = selection.training_set_score(cfg, *selection.distilled_set(st.poster, st.Y, pb.geom, pb.labels),
                                                 real, device)
            row["train_acc"] = score["score"]
            row["kept"] = selection.consider(out, st.step, st.poster, st.Y, score)
        st.history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}")
        if st.step % cfg.checkpoint_every == 0 or st.step == cfg.steps:
            atomic_torch_save(checkpoint_dict(st), ck_path)
            atomic_write_text(out / "metrics.csv", metrics_csv(st.history))
            last_good = st.step
        if on_step is not None:
            on_step(st.step, cfg.steps)
        if stop_after is not None and st.step >= stop_after:
            break
    bar.close()
    if st.step >= cfg.steps:
        write_results(out, cfg, pb, st, real)
    return st


def write_results(out: Path, cfg: Config, pb: Problem, st: OuterState, real) -> None:
    """poster.pt, labels.pt, metrics.csv and poster.png of a finished run (its kept poster under keep = "best_train")."""
    poster = st.poster.detach().cpu()
    Y = None if st.Y is None else st.Y.detach().cpu()
    kept = None
    if cfg.keep == "best_train":
        k = selection.kept(out)
        poster, Y, kept = k["poster"], k["Y"], {"step": k["step"], "score": k["score"], "by_step": k["by_step"]}
    with torch.no_grad():
        patch_labels = pb.labels(None if Y is None else Y.to(st.poster.device)).cpu()  # fixed labels ignore Y
    pre = getattr(real, "preprocess", None)
    prep = None if pre is None else (whitening.reference(pre) if pre.kind == "zca" else pre.state_dict())
    atomic_torch_save(
        {"poster": poster, "geometry": pb.geom.to_dict(), "order": pb.order, "classes": list(real.classes),
         "preprocess": prep, "dataset": cfg.dataset, "kept": kept},
        out / "poster.pt",
    )
    atomic_torch_save({"patch_labels": patch_labels, "Y": Y, "label_kind": cfg.label_kind}, out / "labels.pt")
    atomic_write_text(out / "metrics.csv", metrics_csv(st.history))
    from .viz import save_per_class_png, save_poster_png

    if poster.dim() == 4:
        save_per_class_png(out / "poster.png", poster, pb.geom, list(real.classes), getattr(real, "preprocess", None))
        return
    save_poster_png(out / "poster.png", poster, pb.geom, pb.order, list(real.classes), getattr(real, "preprocess", None))


def load_run(run: str | os.PathLike, data_root: str | os.PathLike | None = None) -> dict:
    """A finished run's poster, patches and labels: {'x', 'y', 'poster', 'config', ...}.

    A whitening the run keeps by reference is recomputed from its dataset (data_root, else the run's own).
    """
    run = Path(run)
    if not run.is_dir():
        raise PoddError(f"run folder {run} does not exist" if not run.exists() else f"{run} is a file, not a run folder")
    for name in ("config.json", "poster.pt", "labels.pt"):
        if not (run / name).exists():
            raise PoddError(f"{run} is not a finished run: {name} is missing")
    cfg = read_config(run / "config.json")
    P = load_torch_file(run / "poster.pt", ("poster", "geometry", "order", "classes", "preprocess"))
    L = load_torch_file(run / "labels.pt", ("patch_labels", "Y"))
    if not isinstance(P["classes"], list):
        raise PoddError(f"{run / 'poster.pt'}: classes is not a list of names; the file is damaged or foreign")
    for name in P["classes"]:
        check_name(name, "class name", run / "poster.pt")
    check_text(P.get("dataset", cfg.dataset), "dataset name", run / "poster.pt")
    geom = PosterGeometry(**{k: P["geometry"][k] for k in PosterGeometry.__dataclass_fields__})
    from .poster import extract_patches

    x = extract_patches(P["poster"], geom)
    return {"x": x, "y": L["patch_labels"], "poster": P["poster"], "geometry": geom, "config": cfg,
            "order": P["order"], "classes": P["classes"], "Y": L["Y"],
            "preprocess": whitening.resolve(P["preprocess"], cfg, run / "poster.pt", data_root),
            "kept": P.get("kept")}
