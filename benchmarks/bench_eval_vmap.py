"""Time K models trained together (vmap) against the same K models trained one by one.

    python benchmarks/bench_eval_vmap.py [--models 8] [--width 32] [--steps 50] [--repeats 3]
        [--threads N] [--device cpu] [--out results.json]

Both runs use `evaluate.train_and_test` with identical seeds, batches and augmentation
(vectorize=True vs vectorize=False); only training is timed (the test set is 10 images, tested
once). An untimed 3-step warm-up of each comes first. Prints medians and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from podd_lib.evaluate import EvalProtocol, train_and_test
from podd_lib.io import atomic_write_json


def one_run(vectorize: bool, a: argparse.Namespace, data: tuple, steps: int) -> float:
    """Seconds for one train_and_test call of `steps` steps."""
    x, y, xt, yt = data
    t0 = time.perf_counter()
    protocol = EvalProtocol(num_models=a.models, steps=(steps,), bs_d=a.bs_d, width=a.width)
    train_and_test(x, y, xt, yt, protocol, progress=False, vectorize=vectorize, device=a.device)
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    """Parse arguments, time both ways, print the medians and their ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=8)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--bs-d", dest="bs_d", type=int, default=96)
    p.add_argument("--n-syn", dest="n_syn", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.n_syn, 3, 32, 32, generator=g)
    y = torch.softmax(torch.randn(a.n_syn, 10, generator=g), -1)
    data = (x, y, torch.randn(10, 3, 32, 32, generator=g), torch.arange(10))
    for vec in (True, False):  # short warm-up (kernel caches, lazy imports)
        one_run(vec, a, data, 3)
    times = {"vmap": [], "sequential": []}
    for _ in range(a.repeats):  # interleaved, so load changes hit both alike
        times["vmap"].append(one_run(True, a, data, a.steps))
        times["sequential"].append(one_run(False, a, data, a.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"settings": vars(a), "torch_threads": torch.get_num_threads(), "seconds": times,
              "median_s": med, "sequential_over_vmap": med["sequential"] / med["vmap"]}
    print(f"threads={torch.get_num_threads()} K={a.models} width={a.width} steps={a.steps} "
          f"bs_d={a.bs_d}: vmap {med['vmap']:.2f}s, sequential {med['sequential']:.2f}s, "
          f"ratio {result['sequential_over_vmap']:.2f}x  (runs: {times})")
    if a.out:
        atomic_write_json(a.out, result)


if __name__ == "__main__":
    main()
