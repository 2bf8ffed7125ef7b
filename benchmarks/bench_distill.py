"""Time the distiller's outer step, the evaluation, and patch/label extraction at named settings.

    python benchmarks/bench_distill.py --setting cpu-bench            # the CPU setting
    python benchmarks/bench_distill.py --setting paper --device cuda  # CIFAR-10 paper settings
    python benchmarks/bench_distill.py --setting smoke                # seconds; CI runs this
    python benchmarks/bench_distill.py --parts outer_step --before        # the step before the speed work
    python benchmarks/bench_distill.py --parts phases,conv_dtype,peak     # where time goes; bf16; GFLOP/s

Prints one JSON line per measured part: median seconds, steps per second, peak memory (CPU
max RSS of this process, or CUDA max allocated). Data is random (timing does not depend on
pixel values); warm-up steps are excluded from the median.

--before is the outer step as it was before the speed work: plain ConvNet layers (F.group_norm
and autograd's double backward), NCHW batches, the real batch in one piece, 4 KB pages, and
backward() into every leaf. Everything else in the step is today's code.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from podd_lib.fast import enable_runtime  # noqa: E402

# Must precede the first large CPU allocation: PyTorch's allocator reads the setting once.
if "--before" in sys.argv:
    os.environ["THP_MEM_ALLOC_ENABLE"] = "0"
enable_runtime()

import torch  # noqa: E402

from podd_lib.fast import kernels  # noqa: E402
from podd_lib.config import Config, parse_sets, resolve_config  # noqa: E402
from podd_lib.run import build_problem, initial_state  # noqa: E402
from podd_lib.evaluate import EvalProtocol, train_and_test  # noqa: E402
from podd_lib.poster import extract_patches  # noqa: E402
from podd_lib.algorithms.ratbptt import outer_step  # noqa: E402
from podd_lib.fast.runtime import keep_freed_memory  # noqa: E402
from podd_lib.determinism import deterministic_mode  # noqa: E402

ORDER = [[9, 0, 2, 4, 3], [1, 8, 6, 7, 5]]

# Named settings: config overrides on CIFAR-10 at 1 IPC (16x6 = 96 patches) plus bench sizes.
SETTINGS = {
    # The CPU setting: width 128, bs_d 96, fixed curriculum of 10 plain steps, window 10, bs 500.
    "cpu-bench": dict(over={"width": 128, "window": 10, "totwindow": 20, "bs": 500, "fixed_curriculum": 10},
                      steps=3, warmup=1, eval_models=8, eval_steps=300, eval_width=128),
    # The paper's CIFAR-10 settings (window 60, totwindow 200, bs 5000): for a GPU.
    "paper": dict(over={}, steps=5, warmup=2, eval_models=8, eval_steps=300, eval_width=128),
    # Seconds, for CI: proves the script runs; its numbers mean nothing.
    "smoke": dict(over={"width": 8, "window": 2, "totwindow": 4, "bs": 32, "fixed_curriculum": 2},
                  steps=2, warmup=1, eval_models=2, eval_steps=5, eval_width=8),
}


def peak_memory_gb(device: str) -> float:
    """CUDA max allocated, or this process's max RSS, in GB."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux


def timed(fn, device: str) -> float:
    """Seconds for one call of fn (synchronising CUDA)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def report(part: str, setting: str, times: list[float], device: str, **extra) -> dict:
    """One JSON line of results."""
    med = statistics.median(times)
    row = {"part": part, "setting": setting, "device": device, "median_s": round(med, 4),
           "steps_per_s": round(1 / med, 4) if med > 0 else None, "runs": len(times),
           "peak_mem_gb": round(peak_memory_gb(device), 3), "torch": torch.__version__,
           "threads": torch.get_num_threads(), **extra}
    print(json.dumps(row), flush=True)
    return row


def bench_outer_step(setting: str, device: str, steps: int | None = None, sets: dict | None = None,
                     warmup: int | None = None) -> dict:
    """Median seconds of the RaT-BPTT outer step."""
    s = dict(SETTINGS[setting])
    s["warmup"] = s["warmup"] if warmup is None else warmup
    cfg, pb, st, x, y = _cpu_bench_problem(setting, device, sets)
    n = steps or s["steps"]
    with deterministic_mode(cfg.deterministic, device):  # as `podd distill` runs it
        times = [timed(lambda: outer_step(st, pb.model, pb.labels, pb.geom, x, y, pb.settings), device)
                 for _ in range(s["warmup"] + n)][s["warmup"]:]
    curriculum = "random" if cfg.fixed_curriculum is None else cfg.fixed_curriculum
    return report("outer_step", setting, times, device, width=cfg.width, window=cfg.window, bs=cfg.bs,
                  bs_d=cfg.bs_d, curriculum=curriculum, real_chunk=cfg.real_chunk, channels_last=cfg.channels_last,
                  conv_dtype=cfg.conv_dtype, block=BLOCK_IMPL, deterministic=cfg.deterministic,
                  kernels=kernels_used(cfg, device),
                  thp=os.environ.get("THP_MEM_ALLOC_ENABLE"), before=BLOCK_IMPL == "layers")


def kernels_used(cfg: Config, device: str) -> str:
    """Which elementwise code the fused blocks ran: "compiled" (podd_lib.fast.kernels) or "torch"."""
    on = BLOCK_IMPL == "fused" and cfg.cpu_kernels and device == "cpu" and cfg.channels_last
    return "compiled" if on and kernels.load() is not None else "torch"


def _cpu_bench_problem(setting: str, device: str, sets: dict | None):
    """A setting's config, problem, outer state and random real set (timing does not depend on pixels)."""
    s = SETTINGS[setting]
    cfg = resolve_config("cifar10", 1.0, "paper", {**s["over"], **(sets or {})})
    pb = build_problem(cfg, ORDER, 3, device)
    st = initial_state(cfg, pb, 3, device)
    n_real = max(cfg.bs, 1000)
    return cfg, pb, st, torch.randn(n_real, 3, 32, 32, device=device), torch.randint(0, 10, (n_real,), device=device)


def bench_phases(setting: str, device: str, sets: dict | None = None, rounds: int = 2) -> dict:
    """Seconds of each part of one outer step: plain steps, unrolled window, real batch, backward."""
    from podd_lib.algorithms.base import SyntheticSet, reinit_params
    from podd_lib.algorithms.ratbptt import inner_steps, real_loss_grad_chunked
    from podd_lib.optim import adam_init

    cfg, pb, st, x, y = _cpu_bench_problem(setting, device, sets)
    s, model, syn = pb.settings, pb.model, SyntheticSet(st.poster, st.Y, pb.labels, pb.geom)
    leaves = [t for t in (st.poster, st.Y) if t is not None]
    fmt = torch.channels_last if s.channels_last else torch.contiguous_format

    def once() -> dict:
        t, out = time.perf_counter(), {}
        params = reinit_params(model, st.gen)
        state = adam_init({k: p.detach() for k, p in params.items()})
        params, state = inner_steps(model, params, state, syn.poster, syn.Y, syn.labels, syn.geom, s,
                                    s.totwindow - s.window if s.fixed_curriculum is None else s.fixed_curriculum,
                                    st.gen, False)
        out["plain_s"], t = time.perf_counter() - t, time.perf_counter()
        params, state = inner_steps(model, params, state, syn.poster, syn.Y, syn.labels, syn.geom, s, s.window,
                                    st.gen, True)
        out["window_s"], t = time.perf_counter() - t, time.perf_counter()
        xr = x[: s.bs].contiguous(memory_format=fmt)
        _, grads = real_loss_grad_chunked(model, {k: p.detach() for k, p in params.items()}, xr, y[: s.bs],
                                          s.real_chunk or s.bs)
        surrogate = sum((params[k] * grads[k]).sum() for k in params)
        out["real_s"], t = time.perf_counter() - t, time.perf_counter()
        torch.autograd.grad(surrogate, leaves)
        out["backward_s"] = time.perf_counter() - t
        return out

    once()  # warm-up
    runs = [once() for _ in range(rounds)]
    med = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
    row = {"part": "phases", "setting": setting, "device": device, **med, "conv_dtype": cfg.conv_dtype,
           "block": BLOCK_IMPL}
    print(json.dumps(row), flush=True)
    return row


def bench_conv_dtype(setting: str, device: str, sets: dict | None = None) -> dict:
    """Cosine similarity of the meta-gradient under conv_dtype=bfloat16 with float32's (same step, same RNG)."""
    from podd_lib.algorithms.base import RealSampler, SyntheticSet
    from podd_lib.algorithms.ratbptt import RatBptt

    _, pb, st, x, y = _cpu_bench_problem(setting, device, sets)
    leaves = [t for t in (st.poster, st.Y) if t is not None]

    def meta_grad(cdt) -> torch.Tensor:
        pb.model.conv_dtype = cdt
        loss, _ = RatBptt(pb.model, pb.settings).meta_loss(SyntheticSet(st.poster, st.Y, pb.labels, pb.geom),
                                                            RealSampler(x, y, 10),
                                                            torch.Generator(device).manual_seed(123), 0)
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, leaves)])

    a, b, c = meta_grad(None), meta_grad(None), meta_grad(torch.bfloat16)
    cos = lambda u, v: round(float(u @ v / u.norm() / v.norm()), 7)  # noqa: E731
    row = {"part": "conv_dtype", "setting": setting, "device": device, "cos_float32_rerun": cos(a, b),
           "cos_bfloat16": cos(a, c), "norm_ratio_bfloat16": round(float(c.norm() / a.norm()), 4)}
    print(json.dumps(row), flush=True)
    return row


def bench_evaluation(setting: str, device: str, steps: int | None = None) -> dict:
    """Seconds to train eval_models networks for eval_steps steps together (vmap) and one by one."""
    s = dict(SETTINGS[setting])
    s["eval_steps"] = steps or s["eval_steps"]
    x = torch.randn(96, 3, 32, 32)
    y = torch.softmax(torch.randn(96, 10), 1)
    xt, yt = torch.randn(500, 3, 32, 32), torch.randint(0, 10, (500,))
    protocol = EvalProtocol(num_models=s["eval_models"], steps=(s["eval_steps"],), bs_d=96, width=s["eval_width"])
    kw = dict(device=device, progress=False)
    together = timed(lambda: train_and_test(x, y, xt, yt, protocol, vectorize=True, **kw), device)
    apart = timed(lambda: train_and_test(x, y, xt, yt, protocol, vectorize=False, **kw), device)
    two = replace(protocol, num_models=2, steps=(5,))
    share = conv_share(lambda: train_and_test(x, y, xt, yt, two, vectorize=False, **kw)
                       ) if device == "cpu" else None  # CPU time only: no bound for a GPU
    return report("evaluation", setting, [together], device, models=s["eval_models"], steps=s["eval_steps"],
                  width=s["eval_width"], sequential_s=round(apart, 3), speedup_vs_sequential=round(apart / together, 3),
                  block=BLOCK_IMPL, sequential_conv_share=share and round(share, 3),
                  together_bound_at_same_conv_speed=round(1 / share, 3) if share else None)


def conv_share(fn) -> float:
    """Fraction of fn's profiled CPU time spent inside convolution kernels (forward and backward).

    Training K models together can at best remove the rest, unless batching made the convolutions
    themselves faster: so 1 / share bounds its speed-up over the sequential loop on the same kernels.
    """
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    conv = sum(e.self_cpu_time_total for e in events
               if e.key in ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d_forward",
                            "aten::_slow_conv2d_backward", "aten::cudnn_convolution"))
    total = sum(e.self_cpu_time_total for e in events)
    return conv / total if total else 0.0


def bench_peak(setting: str, device: str, reps: int = 10) -> dict:
    """GFLOP/s of a 4096^3 float32 matrix product and of the ConvNet's middle convolution (bs_d 96, 16x16)."""
    a, b = torch.randn(4096, 4096, device=device), torch.randn(4096, 4096, device=device)
    x = torch.randn(96, 128, 16, 16, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(128, 128, 3, 3, device=device)

    def rate(fn, flop: float) -> float:
        times = [timed(fn, device) for _ in range(reps + 2)][2:]
        return round(flop / statistics.median(times) / 1e9, 1)

    row = {"part": "peak", "setting": setting, "device": device,
           "matmul_gflops": rate(lambda: a @ b, 2 * 4096**3),
           "conv_gflops": rate(lambda: torch.nn.functional.conv2d(x, w, padding=1), 2 * 96 * 16 * 16 * 128 * 128 * 9),
           "threads": torch.get_num_threads()}
    print(json.dumps(row), flush=True)
    return row


def bench_extraction(setting: str, device: str, reps: int = 50) -> dict:
    """Median seconds of extracting all patches and labels (forward and backward)."""
    cfg = resolve_config("cifar10", 1.0, "paper", {**SETTINGS[setting]["over"], "labels": "learned"})
    pb = build_problem(cfg, ORDER, 3, device)
    poster = torch.randn(3, pb.geom.d_h, pb.geom.d_w, device=device, requires_grad=True)
    Y = pb.labels.Y.to(device).requires_grad_(True)

    def once() -> None:
        out = extract_patches(poster, pb.geom).sum() + pb.labels(Y).sum()
        out.backward()

    times = [timed(once, device) for _ in range(reps + 3)][3:]
    return report("extraction", setting, times, device, patches=pb.geom.n_patches)


BLOCK_IMPL = "fused"
BEFORE = {"real_chunk": 0, "channels_last": False, "cpu_kernels": False}


def use_plain_layers() -> None:
    """The ConvNet as separate layers: F.group_norm and autograd's generic double backward."""
    import podd_lib.training as training
    import podd_lib.fast.block as block

    global BLOCK_IMPL
    block._under_functorch = lambda x: True
    training.CHANNELS_LAST = False
    BLOCK_IMPL = "layers"


def use_backward_into_every_leaf() -> None:
    """The outer backward as it was: loss.backward(), which also fills the inner network's leaves."""
    import podd_lib.algorithms.base as algorithm

    def grads_of_leaves(st, loss):
        loss.backward()

    algorithm.outer_grads = grads_of_leaves


def main() -> None:
    """Parse arguments and run the chosen parts."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setting", choices=sorted(SETTINGS), default="cpu-bench")
    p.add_argument("--device", default="cpu")
    p.add_argument("--parts", default="extraction,outer_step,evaluation",
                   help="comma-separated: extraction, outer_step, evaluation, phases, conv_dtype, peak")
    p.add_argument("--steps", type=int, default=None, help="timed outer steps (after warm-up)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override for the outer step")
    p.add_argument("--warmup", type=int, default=None, help="untimed outer steps first (default: the setting's)")
    p.add_argument("--memory-limit-gb", type=float, default=None,
                   help="cap this process's address space; running out is reported as a JSON line, not a crash")
    p.add_argument("--eval-steps", type=int, default=None, help="training steps of the evaluation part")
    p.add_argument("--before", action="store_true", help="the outer step as it was before the speed work (see above)")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="glibc malloc keeps freed memory for reuse: faster on CPU, more peak RSS")
    args = p.parse_args()
    sets = parse_sets(args.set)
    if args.before:
        use_plain_layers()
        use_backward_into_every_leaf()
        sets = {**BEFORE, **sets}
    if args.keep_freed_memory and not keep_freed_memory():  # podd_lib.fast.runtime
        p.error("--keep-freed-memory needs glibc's mallopt")
    torch.manual_seed(0)
    parts = args.parts.split(",")
    if "extraction" in parts:
        bench_extraction(args.setting, args.device)
    if args.memory_limit_gb is not None and args.memory_limit_gb < 8:
        p.error("--memory-limit-gb must be at least 8: torch's own address space is 3-4 GB before any tensor")
    if args.memory_limit_gb:
        limit = int(args.memory_limit_gb * 1e9)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if "outer_step" in parts:
        try:
            bench_outer_step(args.setting, args.device, args.steps, sets, args.warmup)
        except (MemoryError, RuntimeError) as e:  # torch reports a failed CPU allocation as RuntimeError
            if args.memory_limit_gb is None or "memory" not in str(e).lower():
                raise
            print(json.dumps({"part": "outer_step", "setting": args.setting, "device": args.device,
                              "error": f"out of memory under --memory-limit-gb {args.memory_limit_gb}",
                              "peak_mem_gb": round(peak_memory_gb(args.device), 3), "before": args.before}),
                  flush=True)
    if "phases" in parts:
        bench_phases(args.setting, args.device, sets)
    if "conv_dtype" in parts:
        bench_conv_dtype(args.setting, args.device, sets)
    if "evaluation" in parts:
        bench_evaluation(args.setting, args.device, args.eval_steps)
    if "peak" in parts:
        bench_peak(args.setting, args.device)


if __name__ == "__main__":
    main()
