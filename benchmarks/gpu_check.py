"""The GPU check: is the kit correct on CUDA, how fast is it, and does Figure 6 come out? One command.

    python benchmarks/gpu_check.py --out OUT --data-root DATA            # on a GPU: about 9 minutes
    python benchmarks/gpu_check.py --tiny --device cpu --out OUT --data-root DATA   # CI: seconds

Parts, in this order, each time-boxed against one deadline (--budget-s, default 540 s), so that
a partial run still answers the most important questions; after every part OUT/gpu_check.json
and OUT/gpu_check.md (a short table) are rewritten atomically:

  environment  torch / CUDA / cuDNN versions, device name and memory, TF32 flags
  correctness  float32 on the device against float64 references: the fused ConvNet block and the
               reference layers (forward, backward, double backward), one RaT-BPTT meta-gradient
               on the fast and the reference path, the vmapped evaluation against the loop over
               models, patch extraction (forward and backward); relative errors and their bounds.
               TF32 is off in this part (it is a 1e-3-level approximation by design).
  speed        at the paper setting (width 128, window 60, bs 5000; curriculum fixed at its mean,
               70 plain steps): median seconds per outer step and peak CUDA memory for the
               reference and the fast path, bfloat16 autocast, the plain inner step eager and
               compiled (torch.compile default and reduce-overhead), the 8-model evaluation as a
               loop, vmapped, and vmapped + compiled
  fidelity     CIFAR-10 at the paper's settings (release init "class_areas"), 1 IPC, 16x6 patches
               and the 5x2 tiling, each for as many outer steps as fit its share of the time (at
               most --fidelity-steps, Figure 6's 500), evaluated with 8 networks at 300 steps and
               at 2000 if time allows; the paper's Figure 6 numbers beside.

--data-root: a CIFAR-10 ImageFolder (DIR/{train,test}/<class>/ or DIR/cifar10/...), a torchvision
CIFAR folder (DIR/cifar-10-batches-py or DIR/cifar10/cifar-10-batches-py), or a .zip holding
cifar10/{train,test}/... (scripts/make_gpu_subset.sh writes one; it is unpacked to a temporary
folder). The data is read without writing a cache into it.

--tiny: a slice of the data (20 train / 10 test images per class), width 8, a few steps, 2
networks: it proves the script end to end on the CPU (tests/test_gpu_check.py); numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from podd_lib.fast import enable_runtime  # noqa: E402

enable_runtime()

import torch  # noqa: E402

if TYPE_CHECKING:
    from podd_lib.config import Config

TOOL = "podd_lib gpu_check"
PAPER_FIG6 = {"16x6": 56.73, "5x2": 45.15}  # method notes section 7: 96 patches, 10 patches (500 steps)
ORDER = [[9, 0, 2, 4, 3], [1, 8, 6, 7, 5]]  # the paper's published CIFAR-10 class order (configs: order = "paper")
PARTS = ("environment", "correctness", "speed", "fidelity")

# Bounds on relative errors (||a - b|| / ||b||) of float32 on the device against float64 references.
# The meta-gradient's is loose: float32 rounding grows through the unrolled Adam steps (on the CPU the
# reference layers themselves are 1.5e-2 from float64 at the tiny setting); a wrong path is O(1) off.
BOUNDS = {
    "forward": 1e-5, "backward": 1e-4, "double_backward": 1e-3, "meta_gradient": 5e-2,
    "vmap_vs_loop": 1e-4, "extraction_forward": 1e-6, "extraction_backward": 1e-6,
}


# ----------------------------------------------------------------------------- small helpers

def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (0 when both are zero)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    nb = float(b.norm())
    return float((a - b).norm()) / nb if nb > 0 else float((a - b).norm())


def cat_flat(ts) -> torch.Tensor:
    """All tensors flattened into one float64 CPU vector."""
    return torch.cat([t.detach().double().cpu().reshape(-1) for t in ts])


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA), so that timings are true."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    """Seconds for one call of fn, synchronised."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def peak_gb(device: str) -> float | None:
    """Peak CUDA memory allocated since the last reset (GB), or None on the CPU."""
    return torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    """Start a new peak-memory window (CUDA)."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


class Clock:
    """The global deadline of the check."""

    def __init__(self, budget_s: float):
        self.t0, self.budget = time.perf_counter(), float(budget_s)

    def left(self) -> float:
        """Seconds left before the deadline."""
        return self.budget - (time.perf_counter() - self.t0)

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self.t0


# ----------------------------------------------------------------------------- settings

def sizes(tiny: bool) -> dict:
    """The check's sizes: the paper's on a GPU, a sliver for --tiny."""
    if tiny:
        return dict(tiny=True, width=8, batch=8, meta_over={"width": 8, "window": 2, "totwindow": 4, "bs": 32,
                                                  "fixed_curriculum": 2, "real_chunk": 16},
                    eval_models=2, eval_check_steps=3, speed_over={"width": 8, "window": 2, "totwindow": 4, "bs": 32,
                                                                    "fixed_curriculum": 2},
                    speed_steps=1, speed_warmup=1, plain_steps=3, eval_speed_steps=3,
                    fid_over={"width": 8, "window": 2, "totwindow": 4, "bs": 64, "train_per_class": 20,
                              "test_per_class": 10},
                    fid_steps=2, eval_steps=(5,), eval_long=(10,), fid_models=2)
    return dict(tiny=False, width=128, batch=96, meta_over={"width": 128, "window": 10, "totwindow": 20, "bs": 500,
                                                 "fixed_curriculum": 10},
                eval_models=8, eval_check_steps=20, speed_over={"fixed_curriculum": 70},
                speed_steps=3, speed_warmup=1, plain_steps=50, eval_speed_steps=100,
                fid_over={}, fid_steps=None, eval_steps=(300,), eval_long=(300, 2000), fid_models=8)


# ----------------------------------------------------------------------------- output

def check_out(out: Path) -> None:
    """Refuse (one line, exit 2) to overwrite files in OUT that this script did not write."""
    for name in ("gpu_check.json", "gpu_check.md"):
        p = out / name
        if not p.exists():
            continue
        try:
            ours = (json.loads(p.read_text()).get("tool") == TOOL if name.endswith(".json")
                    else p.read_text().startswith(f"# {TOOL}"))
        except (ValueError, OSError, AttributeError):
            ours = False
        if not ours:
            raise SystemExit(f"gpu_check: {p} exists and was not written by this script; choose another --out")


def fmt(v, digits: int = 3) -> str:
    """A number for the table."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2e}" if (v != 0 and abs(v) < 1e-2) else f"{v:.{digits}f}"
    return str(v)


def markdown(res: dict) -> str:
    """The short table of the results so far."""
    lines = [f"# {TOOL}", ""]
    env = res.get("environment") or {}
    lines.append(f"{env.get('device_name', '?')}, torch {env.get('torch', '?')}, CUDA {env.get('cuda', '-')}; "
                 f"budget {res['meta']['budget_s']} s, elapsed {res['meta'].get('elapsed_s', 0):.0f} s"
                 f"{' (tiny)' if res['meta']['tiny'] else ''}")
    cor = res.get("correctness") or {}
    if cor.get("checks"):
        lines += ["", "| correctness (float32 vs float64) | rel. error | bound | ok |", "| --- | --- | --- | --- |"]
        for c in cor["checks"]:
            lines.append(f"| {c['name']} | {fmt(c['rel_err'])} | {fmt(c['bound'])} | {'yes' if c['ok'] else 'NO'} |")
    sp = res.get("speed") or {}
    if sp.get("rows"):
        lines += ["", "| speed | median s | peak GB | note |", "| --- | --- | --- | --- |"]
        for r in sp["rows"]:
            lines.append(f"| {r['name']} | {fmt(r.get('median_s'))} | {fmt(r.get('peak_gb'))} | {r.get('note', '')} |")
    fid = res.get("fidelity") or {}
    if fid.get("runs"):
        lines += ["", "| fidelity, CIFAR-10 1 IPC | outer steps | distill s | acc @300 | acc @2000 | paper (500 steps) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in fid["runs"]:
            acc = {e["step"]: f"{e['mean_pct']:.2f} ± {e['std_pct']:.2f}" for e in r.get("eval", [])}
            first = min(acc) if acc else None
            lines.append(f"| {r['patches']} | {r.get('outer_steps', '-')} | {fmt(r.get('distill_s'), 0)} | "
                         f"{acc.get(300, acc.get(first, '-'))} | {acc.get(2000, '-')} | {r['paper']} |")
    for part in PARTS:
        p = res.get(part) or {}
        if p.get("error") or p.get("skipped"):
            lines.append(f"\n{part}: {p.get('error') or p.get('skipped')}")
    return "\n".join(lines) + "\n"


def save(res: dict, out: Path, clock: Clock) -> None:
    """Write OUT/gpu_check.json and OUT/gpu_check.md atomically."""
    from podd_lib.io import atomic_write_json, atomic_write_text

    res["meta"]["elapsed_s"] = round(clock.elapsed(), 1)
    atomic_write_json(out / "gpu_check.json", res)
    atomic_write_text(out / "gpu_check.md", markdown(res))


# ----------------------------------------------------------------------------- data

def locate_data(path: Path) -> Path:
    """The data root under which load_dataset("cifar10") finds CIFAR-10, or SystemExit with one line."""
    if path.is_file() and path.suffix == ".zip":
        tmp = Path(tempfile.mkdtemp(prefix="podd_gpu_check_"))
        with zipfile.ZipFile(path) as z:
            z.extractall(tmp)
        path = tmp
    for root, folder in ((path, path / "cifar10"), (path.parent, path)):
        if folder.name == "cifar10" and ((folder / "train").is_dir() and (folder / "test").is_dir()
                                         or (folder / "cifar-10-batches-py").is_dir()):
            return root
    if (path / "train").is_dir() and (path / "test").is_dir():
        raise SystemExit(f"gpu_check: name the ImageFolder's folder cifar10 (got {path}) or pass its parent")
    raise SystemExit(f"gpu_check: no CIFAR-10 at {path} (need cifar10/{{train,test}}/<class>/, "
                     f"cifar10/cifar-10-batches-py, or a .zip of cifar10/...)")


# ----------------------------------------------------------------------------- part 1: environment

def environment(device: str) -> dict:
    """Versions, device and memory."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
           "device": device, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(device)
        env.update(device_name=p.name, memory_gb=round(p.total_memory / 1e9, 1),
                   capability=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count)
    else:
        env.update(device_name=f"CPU ({platform.processor() or platform.machine()})")
    return env


# ----------------------------------------------------------------------------- part 2: correctness

def _check(name: str, err: float, bound_key: str, **extra) -> dict:
    """One correctness row."""
    bound = BOUNDS[bound_key]
    return {"name": name, "rel_err": err, "bound": bound, "ok": bool(err <= bound), **extra}


def block_checks(device: str, width: int, batch: int) -> list[dict]:
    """The ConvNet (fused blocks and reference layers) in float32 against the reference layers in float64."""
    from podd_lib.models import make_model, set_backend

    def net(fast: bool, dtype: torch.dtype):
        torch.manual_seed(0)
        m = make_model("convnet", 3, 10, 32, width=width).to(device, dtype)
        return set_backend(m, fast)

    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    v0 = [torch.randn(p.shape, generator=g) for p in net(False, torch.float64).parameters()]

    def derivatives(fast: bool, dtype: torch.dtype):
        m = net(fast, dtype)
        x = x0.to(device, dtype)
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        params = list(m.parameters())
        out = m(x)
        loss = torch.nn.functional.cross_entropy(out, y)
        grads = torch.autograd.grad(loss, params + [x], create_graph=True)
        hv = sum((gi * vi.to(device, dtype)).sum() for gi, vi in zip(grads[:-1], v0))
        dbl = torch.autograd.grad(hv, params + [x])
        return out, cat_flat(grads), cat_flat(dbl)

    ref = derivatives(False, torch.float64)
    rows = []
    for fast, label in ((True, "fused block"), (False, "reference layers")):
        got = derivatives(fast, torch.float32)
        for (what, key), a, b in zip((("forward", "forward"), ("backward", "backward"),
                                      ("double backward", "double_backward")), got, ref):
            rows.append(_check(f"ConvNet {label}, {what}", rel_err(a, b), key, path=label))
    return rows


def _meta_gradient(cfg: Config, device: str, dtype: torch.dtype) -> torch.Tensor:
    """d(meta-loss)/d(poster) of one RaT-BPTT outer step on random data, in dtype, seeded.

    The inner network is drawn in float32 and cast, so float32 and float64 start from the same weights.
    """
    import copy

    import podd_lib.algorithms.ratbptt as rb
    from podd_lib.algorithms.base import RealSampler, SyntheticSet, outer_grads, reinit_params
    from podd_lib.run import build_problem, initial_state

    def reinit_in_float32(model: torch.nn.Module, gen: torch.Generator) -> dict:
        twin = copy.deepcopy(model).float()
        return {k: p.detach().to(dtype).requires_grad_(True) for k, p in reinit_params(twin, gen).items()}

    pb = build_problem(cfg, ORDER, 3, device)
    pb.model.to(dtype)
    st = initial_state(cfg, pb, 3, device)
    st.poster.data = st.poster.data.to(dtype)
    if pb.labels.table is not None:
        pb.labels.table = pb.labels.table.to(dtype)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(max(cfg.bs, 64), 3, 32, 32, generator=g).to(device, dtype)
    y = torch.randint(0, 10, (x.shape[0],), generator=g).to(device)
    syn = SyntheticSet(st.poster, st.Y, pb.labels, pb.geom)
    rb.reinit_params = reinit_in_float32
    try:
        loss, _ = pb.algo.meta_loss(syn, RealSampler(x, y, 10), st.gen, 0)
    finally:
        rb.reinit_params = reinit_params
    outer_grads(st, loss)
    return st.poster.grad.detach()


def meta_checks(device: str, over: dict) -> list[dict]:
    """One RaT-BPTT meta-gradient on the fast and the reference path (float32) against float64 reference layers."""
    from podd_lib.config import resolve_config

    def cfg(backend: str) -> Config:
        return resolve_config("cifar10", 1.0, "paper", {**over, "backend": backend})

    ref = _meta_gradient(cfg("reference"), device, torch.float64)
    rows, got = [], {}
    for backend in ("fast", "reference"):
        got[backend] = _meta_gradient(cfg(backend), device, torch.float32)
        cos = float(torch.nn.functional.cosine_similarity(got[backend].double().flatten(), ref.double().flatten(), dim=0))
        rows.append(_check(f"RaT-BPTT meta-gradient, {backend} path", rel_err(got[backend], ref), "meta_gradient",
                           cosine=cos, path=backend))
    rows.append(_check("RaT-BPTT meta-gradient, fast vs reference (both float32)",
                       rel_err(got["fast"], got["reference"]), "meta_gradient"))
    return rows


def eval_checks(device: str, width: int, models: int, steps: int) -> list[dict]:
    """The vmapped evaluation step against the loop over models (gradients), and both trainings side by side."""
    from podd_lib import evaluate as ev
    from podd_lib import training
    from podd_lib.models import make_model, set_backend, stacked_fresh

    g = torch.Generator().manual_seed(3)
    x = torch.randn(96, 3, 32, 32, generator=g)
    y = torch.softmax(torch.randn(96, 10, generator=g), -1)
    xt, yt = torch.randn(200, 3, 32, 32, generator=g), torch.randint(0, 10, (200,), generator=g)
    fn = lambda: make_model("convnet", 3, 10, 32, width=width)  # noqa: E731
    with torch.device("meta"):
        base = set_backend(fn(), device == "cpu")  # the evaluation's default backend rule
    params, buffers = stacked_fresh(fn, list(range(models)), device)
    idx = training.random_batches(96, models, 96, g)
    xb, yb = x[idx].to(device), y[idx].to(device)
    gv, lv = training._vmapped_grads(base, params, buffers, xb, yb)
    gl, ll = training._sequential_grads(base, params, buffers, xb, yb, channels_last=device == "cpu")
    err = rel_err(cat_flat(gv.values()), cat_flat(gl.values()))
    protocol = ev.EvalProtocol(num_models=models, steps=(steps,), width=width)
    out = {vec: ev.train_and_test(x, y, xt, yt, protocol, vectorize=vec, device=device, progress=False,
                                  return_params=True) for vec in (True, False)}
    p_err = rel_err(cat_flat(out[True]["params"].values()), cat_flat(out[False]["params"].values()))
    return [_check(f"evaluation step, vmap vs loop ({models} models): gradients", err, "vmap_vs_loop",
                   loss_rel_err=rel_err(lv, ll), backend=out[True]["backend"],
                   params_rel_err_after_training=p_err, training_steps=steps,
                   acc_vmap=out[True]["final"]["mean_pct"], acc_loop=out[False]["final"]["mean_pct"])]


def extraction_checks(device: str) -> list[dict]:
    """Patch extraction (16x6 on the 1-IPC poster) on the device against float64 slicing, forward and backward."""
    from podd_lib.config import resolve_config
    from podd_lib.poster import extract_patches, patch_offsets
    from podd_lib.run import geometry_from_config

    geom = geometry_from_config(resolve_config("cifar10", 1.0, "paper"))
    g = torch.Generator().manual_seed(4)
    poster = torch.randn(3, geom.d_h, geom.d_w, generator=g)
    w = torch.randn(geom.n_patches, 3, geom.h, geom.w, generator=g)
    oy, ox = (t.tolist() for t in patch_offsets(geom))
    ref_p = poster.double().requires_grad_(True)
    ref = torch.stack([ref_p[:, a:a + geom.h, b:b + geom.w] for a, b in zip(oy, ox)])
    (ref_g,) = torch.autograd.grad((ref * w.double()).sum(), ref_p)
    p = poster.to(device).requires_grad_(True)
    got = extract_patches(p, geom)
    (got_g,) = torch.autograd.grad((got * w.to(device)).sum(), p)
    return [_check(f"patch extraction ({geom.n_patches} patches), forward", rel_err(got, ref), "extraction_forward"),
            _check("patch extraction, backward", rel_err(got_g, ref_g), "extraction_backward")]


def correctness(device: str, sz: dict, clock: Clock) -> dict:
    """Every correctness check, TF32 off; each sub-check records its own error if it fails."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    rows, errors = [], []
    try:
        for name, fn in (("blocks", lambda: block_checks(device, sz["width"], sz["batch"])),
                         ("meta", lambda: meta_checks(device, sz["meta_over"])),
                         ("evaluation", lambda: eval_checks(device, sz["width"], sz["eval_models"],
                                                            sz["eval_check_steps"])),
                         ("extraction", lambda: extraction_checks(device))):
            if clock.left() < 5:
                errors.append(f"{name}: skipped, out of time")
                continue
            try:
                rows += fn()
            except Exception as e:  # a failing check is a result, not the end of the check
                errors.append(f"{name}: {type(e).__name__}: {e}")
                traceback.print_exc()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    return {"tf32": False, "checks": rows, "all_ok": bool(rows) and all(r["ok"] for r in rows) and not errors,
            "error": "; ".join(errors) or None}


# ----------------------------------------------------------------------------- part 3: speed

def _outer_rows(device: str, sz: dict, clock: Clock) -> list[dict]:
    """Median outer-step seconds and peak memory: reference, fast, reference + bfloat16 autocast."""
    from podd_lib.algorithms.ratbptt import outer_step
    from podd_lib.config import resolve_config
    from podd_lib.run import build_problem, initial_state

    rows = []
    for name, over in (("outer step, reference layers (CUDA default)", {"backend": "reference"}),
                       ("outer step, fast path (fused blocks, channels-last)", {"backend": "fast"}),
                       ("outer step, reference + bfloat16 autocast", {"autocast": "bfloat16"}),
                       ("outer step, reference + compiled plain steps", {"backend": "reference",
                                                                        "compile_steps": "default"})):
        if clock.left() < 5:
            rows.append({"name": name, "note": "skipped, out of time"})
            continue
        try:
            cfg = resolve_config("cifar10", 1.0, "paper", {**sz["speed_over"], **over})
            pb = build_problem(cfg, ORDER, 3, device)
            st = initial_state(cfg, pb, 3, device)
            g = torch.Generator().manual_seed(5)
            n_real = max(cfg.bs, 64)
            x = torch.randn(n_real, 3, 32, 32, generator=g).to(device)
            y = torch.randint(0, 10, (n_real,), generator=g).to(device)
            reset_peak(device)
            times = []
            for i in range(sz["speed_warmup"] + sz["speed_steps"]):
                if i > sz["speed_warmup"] and clock.left() < 0:
                    break
                times.append(timed(lambda: outer_step(st, pb.model, pb.labels, pb.geom, x, y, pb.settings), device))
            timed_part = times[sz["speed_warmup"]:] or times
            rows.append({"name": name, "median_s": statistics.median(timed_part), "first_s": times[0],
                         "runs": len(timed_part), "peak_gb": peak_gb(device),
                         "note": f"curriculum {cfg.fixed_curriculum}, window {cfg.window}, bs {cfg.bs}, "
                                 f"backend {pb.model.fused_blocks and 'fast' or 'reference'}, "
                                 f"compile {pb.settings.compile_steps}, autocast {pb.settings.autocast}"})
        except Exception as e:
            traceback.print_exc()
            rows.append({"name": name, "note": f"{type(e).__name__}: {e}"})
    return rows


def _plain_rows(device: str, sz: dict, clock: Clock) -> list[dict]:
    """Seconds per plain inner step at width 128 / bs_d 96: eager, torch.compile default, reduce-overhead."""
    from podd_lib.algorithms.ratbptt import RatBpttSettings, inner_steps
    from podd_lib.config import resolve_config
    from podd_lib.fast.compiled import compile_applies, plain_step
    from podd_lib.optim import adam_init
    from podd_lib.run import build_problem, initial_state

    cfg = resolve_config("cifar10", 1.0, "paper", {**sz["speed_over"], "backend": "reference"})
    pb = build_problem(cfg, ORDER, 3, device)
    st = initial_state(cfg, pb, 3, device)
    s: RatBpttSettings = pb.settings
    rows = []
    modes = ["none"] + [m for m in ("default", "reduce-overhead") if compile_applies(m, device)]
    for mode in modes:
        if clock.left() < 5:
            rows.append({"name": f"plain inner step, compile {mode}", "note": "skipped, out of time"})
            continue
        try:
            fn = None if mode == "none" else plain_step(pb.model, s.inner_lr, "none", mode)
            params = {k: p.detach().clone().requires_grad_(True) for k, p in pb.model.named_parameters()}

            def run(n: int):
                inner_steps(pb.model, params, adam_init({k: p.detach() for k, p in params.items()}), st.poster.detach(),
                            None, pb.labels, pb.geom, s, n, st.gen, False, fn)

            first = timed(lambda: run(2), device)  # includes compiling
            t = timed(lambda: run(sz["plain_steps"]), device)
            rows.append({"name": f"plain inner step, compile {mode}", "median_s": t / sz["plain_steps"],
                         "first_s": first, "note": f"mean of {sz['plain_steps']} steps; first 2 steps (compiling) {first:.1f} s"})
        except Exception as e:
            traceback.print_exc()
            rows.append({"name": f"plain inner step, compile {mode}", "note": f"{type(e).__name__}: {e}"})
    return rows


def _eval_rows(device: str, sz: dict, clock: Clock) -> list[dict]:
    """Seconds per training step of the 8-model evaluation: loop, vmap, vmap compiled, vmap + autocast."""
    from podd_lib.evaluate import EvalProtocol, train_and_test
    from podd_lib.fast.compiled import compile_applies

    g = torch.Generator().manual_seed(6)
    x = torch.randn(96, 3, 32, 32, generator=g)
    y = torch.softmax(torch.randn(96, 10, generator=g), -1)
    xt, yt = torch.randn(100, 3, 32, 32, generator=g), torch.randint(0, 10, (100,), generator=g)
    variants = [("loop over models", False, {}), ("vmap", True, {})]
    if not sz["tiny"]:
        variants.append(("vmap + bfloat16 autocast", True, dict(autocast="bfloat16")))
    if compile_applies("default", device):
        variants += [("vmap + compile default", True, dict(compile_steps="default")),
                     ("vmap + compile reduce-overhead", True, dict(compile_steps="reduce-overhead"))]
    rows = []
    n = sz["eval_speed_steps"]
    for name, vectorize, levers in variants:
        if clock.left() < 5:
            rows.append({"name": f"evaluation step, {name}", "note": "skipped, out of time"})
            continue
        try:
            protocol = EvalProtocol(num_models=sz["eval_models"], width=sz["width"], **levers)
            common = dict(device=device, progress=False, vectorize=vectorize)
            reset_peak(device)
            first = timed(lambda: train_and_test(x, y, xt, yt, replace(protocol, steps=(2,)), **common), device)
            t = timed(lambda: train_and_test(x, y, xt, yt, replace(protocol, steps=(n,)), **common), device)
            rows.append({"name": f"evaluation step, {name}", "median_s": t / n, "peak_gb": peak_gb(device),
                         "note": f"{sz['eval_models']} models, mean of {n} steps; first call {first:.1f} s"})
        except Exception as e:
            traceback.print_exc()
            rows.append({"name": f"evaluation step, {name}", "note": f"{type(e).__name__}: {e}"})
    return rows


def speed(device: str, sz: dict, clock: Clock, share: float) -> dict:
    """The speed part: outer steps, plain steps and evaluation steps, each within its part of `share` seconds."""
    rows = []
    for fn, frac in ((_outer_rows, 0.5), (_plain_rows, 0.2), (_eval_rows, 0.3)):
        rows += fn(device, sz, Clock(min(share * frac, clock.left())))
    return {"rows": rows, "tf32_cudnn": torch.backends.cudnn.allow_tf32}


# ----------------------------------------------------------------------------- part 4: fidelity

def fidelity_run(name: str, over: dict, real, device: str, sz: dict, share: float, max_steps: int | None) -> dict:
    """Distill one 1-IPC poster for as many outer steps as fit in 70 % of share, then evaluate it."""
    from podd_lib.algorithms.base import outer_step
    from podd_lib.config import resolve_config
    from podd_lib.evaluate import EvalProtocol, train_and_test
    from podd_lib.run import build_problem, initial_state, make_sampler
    from podd_lib.selection import distilled_set

    t0 = time.perf_counter()
    cfg = resolve_config("cifar10", 1.0, "paper", {"init": "class_areas", **sz["fid_over"], **over})
    steps = max_steps if max_steps is not None else (sz["fid_steps"] or 500)
    pb = build_problem(cfg, ORDER, 3, device, real)
    st = initial_state(cfg, pb, 3, device, real)
    sampler = make_sampler(cfg, real.x_train.to(device), real.y_train.to(device), 10)
    losses = []
    distill_share = 0.7 * share
    while st.step < steps and (time.perf_counter() - t0 < distill_share or st.step == 0):
        row = outer_step(st, pb.algo, pb.labels, pb.geom, sampler, pb.outer)
        losses.append(row["loss"])
    sync(device)
    t_distill = time.perf_counter() - t0
    run = {"patches": name, "outer_steps": st.step, "target_steps": steps, "distill_s": t_distill,
           "s_per_step": t_distill / max(st.step, 1), "loss_first": losses[0], "loss_last": losses[-1],
           "paper": PAPER_FIG6.get(name), "backend": cfg.backend, "init": cfg.init,
           "patch_grid": cfg.patch_grid, "poster_size": cfg.poster_size, "eval": []}
    x_syn, y_syn = distilled_set(st.poster, st.Y, pb.geom, pb.labels)
    protocol = EvalProtocol(num_models=sz["fid_models"], bs_d=cfg.bs_d, width=cfg.width, seed=0)
    kw = dict(device=device, progress=False)
    t1 = time.perf_counter()
    ev = train_and_test(x_syn, y_syn, real.x_test, real.y_test, replace(protocol, steps=sz["eval_steps"]), **kw)
    t_eval = time.perf_counter() - t1
    run["eval"], run["eval_s"] = ev["by_step"], t_eval
    long_steps = sz["eval_long"]
    est = t_eval * long_steps[-1] / sz["eval_steps"][-1] * 1.2
    if share - (time.perf_counter() - t0) > est:
        ev = train_and_test(x_syn, y_syn, real.x_test, real.y_test, replace(protocol, steps=long_steps), **kw)
        run["eval"] = ev["by_step"]
        run["eval_s"] += time.perf_counter() - t1 - t_eval
    else:
        run["eval_long_skipped"] = f"estimated {est:.0f} s, too long for the time left"
    for e in run["eval"]:
        e.pop("train_loss", None)
    return run


def fidelity(device: str, data_root: Path, sz: dict, clock: Clock, res: dict, out: Path, max_steps: int | None) -> dict:
    """Both Figure 6 runs, each within half the time left; saved after each."""
    from podd_lib.config import tiling_overrides
    from podd_lib.data import load_dataset

    t0 = time.perf_counter()
    o = sz["fid_over"]
    real = load_dataset("cifar10", data_root=data_root, zca=not sz["tiny"], cache=False,
                        train_per_class=o.get("train_per_class") or None, test_per_class=o.get("test_per_class") or None)
    part = {"data_root": str(data_root), "n_train": int(real.x_train.shape[0]), "n_test": int(real.x_test.shape[0]),
            "load_s": time.perf_counter() - t0, "runs": [],
            "settings": "CIFAR-10, 1 IPC, width 128, window 60 of 200, bs 5000, bs_d 96, lr 0.001, init class_areas, "
                        "fixed labels, paper order; 8 networks (tiny: 2)"}
    res["fidelity"] = part
    save(res, out, clock)
    runs = (("16x6", {}), ("5x2", tiling_overrides("cifar10", "paper")))
    for i, (name, over) in enumerate(runs):
        share = (clock.left() - 5) / (len(runs) - i)
        if share < 10 and not sz["tiny"]:
            part["runs"].append({"patches": name, "paper": PAPER_FIG6[name], "skipped": "out of time"})
            continue
        try:
            part["runs"].append(fidelity_run(name, over, real, device, sz, share, max_steps))
        except Exception as e:
            traceback.print_exc()
            part["runs"].append({"patches": name, "paper": PAPER_FIG6[name], "error": f"{type(e).__name__}: {e}"})
        save(res, out, clock)
    return part


# ----------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--data-root", required=True, help="CIFAR-10: ImageFolder, torchvision folder or .zip")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    ap.add_argument("--budget-s", type=float, default=540.0, help="global deadline in seconds (default 540)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--fidelity-steps", type=int, default=None, help="outer steps per fidelity run (default 500)")
    ap.add_argument("--tiny", action="store_true", help="a sliver of everything, for CI on the CPU")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the parts in order within the budget; exit 0 when every correctness check passed."""
    a = parse_args(argv)
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise SystemExit(f"gpu_check: unknown part(s) {', '.join(bad)}; choose from {', '.join(PARTS)}")
    if not a.budget_s > 0 or (a.fidelity_steps is not None and a.fidelity_steps < 1):
        raise SystemExit("gpu_check: --budget-s and --fidelity-steps must be positive")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda asked for, but no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise SystemExit(f"gpu_check: --device must be auto, cpu or cuda, got {a.device!r}")
    data = Path(a.data_root).expanduser()
    if not data.exists():
        raise SystemExit(f"gpu_check: --data-root {data} does not exist")
    out = Path(a.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    check_out(out)
    data_root = locate_data(data) if "fidelity" in parts else data
    clock = Clock(a.budget_s)
    sz = sizes(a.tiny)
    res: dict = {"tool": TOOL, "meta": {"command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
                                        "budget_s": a.budget_s, "tiny": a.tiny, "device": device, "parts": parts,
                                        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                        "bounds": BOUNDS, "paper_figure6": PAPER_FIG6}}
    # Shares of the budget: correctness and speed are time-boxed; fidelity takes what is left.
    speed_share = 0.25 * a.budget_s
    for part in parts:
        print(f"gpu_check: {part} ({clock.left():.0f} s left)", flush=True)
        if clock.left() < 5:
            res[part] = {"skipped": "out of time"}
            save(res, out, clock)
            continue
        t = time.perf_counter()
        try:
            if part == "environment":
                res[part] = environment(device)
            elif part == "correctness":
                res[part] = correctness(device, sz, clock)
            elif part == "speed":
                res[part] = speed(device, sz, clock, speed_share)
            else:
                res[part] = fidelity(device, data_root, sz, clock, res, out, a.fidelity_steps)
        except Exception as e:
            traceback.print_exc()
            res[part] = {**(res.get(part) or {}), "error": f"{type(e).__name__}: {e}"}
        res[part]["seconds"] = round(time.perf_counter() - t, 1)
        save(res, out, clock)
    print(markdown(res), flush=True)
    cor = res.get("correctness")
    return 1 if cor is not None and not cor.get("all_ok", False) else 0


if __name__ == "__main__":
    sys.exit(main())
