"""Training K fresh networks on a (distilled) set at once: the engine under the evaluation protocol.

Used by `podd_lib.evaluate` (which validates its inputs and defines the protocol). The K models'
parameters are stacked along a leading axis and trained either together (vmap) or by a loop over
models with the same maths, random draws and Adam; every step each model draws its own batch and
its own augmentation; at each listed step every model is tested on the whole test set.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap
from tqdm.auto import tqdm

from podd_lib.algorithms.base import soft_cross_entropy
from podd_lib.augment import augment
from podd_lib.errors import PoddError
from podd_lib.fast import resolve_backend
from podd_lib.fast.compiled import autocast_context, compile_applies, vmapped_step, widened
from podd_lib.io import atomic_torch_save
from podd_lib.models import is_vmappable, set_backend, stacked_fresh
from podd_lib.optim import adam_init, adam_step

Params = dict[str, Tensor]
STD_NOTE = "population standard deviation over models (ddof=0)"


# ---------------------------------------------------------------- small pure helpers

def hardened(y: Tensor) -> Tensor:
    """One-hot of the argmax of each soft label (ties go to the lowest class index)."""
    return F.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)


def mean_std(acc: Tensor) -> tuple[float, float]:
    """Mean and population (ddof=0) standard deviation of a 1-D tensor."""
    acc = acc.double()
    return float(acc.mean()), float(acc.std(correction=0))


def eval_rng(seed: int, num_models: int) -> tuple[list[int], torch.Generator]:
    """K initialisation seeds and a CPU generator for batches/augmentation, all derived from seed."""
    master = torch.Generator().manual_seed(int(seed))
    init_seeds = torch.randint(0, 2**62, (num_models,), generator=master).tolist()
    data_seed = int(torch.randint(0, 2**62, (1,), generator=master))
    return init_seeds, torch.Generator().manual_seed(data_seed)


def random_batches(n: int, num_models: int, batch: int, g: torch.Generator) -> Tensor:
    """(K, min(batch, n)) indices: per model a uniform batch of distinct items from range(n)."""
    return torch.rand(num_models, n, generator=g).argsort(dim=-1)[:, : min(batch, n)]


def _progress_on(progress: bool) -> bool:
    """Progress bars unless disabled or the CI environment variable is set."""
    return bool(progress) and not os.environ.get("CI")


# ---------------------------------------------------------------- one training step, two ways

def _vmapped_grads(base: nn.Module, params: Params, buffers: Params, xb: Tensor, yb: Tensor,
                   autocast: str = "none", channels_last: bool = False) -> tuple[Params, Tensor]:
    """Per-model gradients and losses of K stacked models in one vmapped pass (vmap keeps NCHW)."""
    def loss_one(p: Params, b: Params, x: Tensor, y: Tensor) -> Tensor:
        with autocast_context(autocast, x.device.type):
            logits = functional_call(base, (p, b), (x,))
        return soft_cross_entropy(widened(logits), y)
    grads, loss = vmap(grad_and_value(loss_one))(params, buffers, xb, yb)
    return grads, loss


# The loop over models feeds channels-last batches: same maths, faster convolutions and pooling
# on the CPU (see benchmarks/README.md). vmap keeps NCHW.
CHANNELS_LAST = True


def _layout(x: Tensor, channels_last: bool = True) -> Tensor:
    """x in channels-last memory for 4-D image batches when CHANNELS_LAST and channels_last, else x."""
    on = CHANNELS_LAST and channels_last and x.dim() == 4
    return x.contiguous(memory_format=torch.channels_last) if on else x


def _sequential_grads(base: nn.Module, params: Params, buffers: Params, xb: Tensor, yb: Tensor,
                      autocast: str = "none", channels_last: bool = True) -> tuple[Params, Tensor]:
    """Same as _vmapped_grads by a loop over models; batch-norm buffers are updated in place."""
    names = list(params)
    per_model, losses = [], []
    for k in range(xb.shape[0]):
        p = {n: params[n][k].detach().requires_grad_() for n in names}
        b = {n: t[k] for n, t in buffers.items()}  # views: running stats update the stack
        with autocast_context(autocast, xb.device.type):
            logits = functional_call(base, (p, b), (_layout(xb[k], channels_last),))
        loss = soft_cross_entropy(widened(logits), yb[k])
        per_model.append(torch.autograd.grad(loss, [p[n] for n in names]))
        losses.append(loss.detach())
    grads = {n: torch.stack([g[i] for g in per_model]) for i, n in enumerate(names)}
    return grads, torch.stack(losses)


@torch.no_grad()
def models_accuracy(base: nn.Module, params: Params, buffers: Params, x_test: Tensor,
                    y_test: Tensor, vectorized: bool, chunk_images: int = 2048, channels_last: bool = True) -> Tensor:
    """(K,) test accuracies in % of K stacked models, evaluated in chunks (eval mode, float32)."""
    k = next(iter(params.values())).shape[0]
    device = next(iter(params.values())).device
    chunk = max(1, chunk_images // k)
    fwd = lambda p, b, x: functional_call(base, (p, b), (x,))  # noqa: E731
    correct = torch.zeros(k, dtype=torch.long, device=device)
    base.eval()
    try:
        for i in range(0, x_test.shape[0], chunk):
            xc, yc = x_test[i:i + chunk].to(device), y_test[i:i + chunk].to(device)
            if vectorized:
                logits = vmap(fwd, in_dims=(0, 0, None))(params, buffers, xc)
            else:
                xc = _layout(xc, channels_last)
                logits = torch.stack([fwd({n: t[m] for n, t in params.items()},
                                          {n: t[m] for n, t in buffers.items()}, xc)
                                      for m in range(k)])
            correct += (logits.argmax(-1) == yc).sum(-1)
    finally:
        base.train()
    return correct.double().cpu() * (100.0 / x_test.shape[0])


# ---------------------------------------------------------------- the shared training engine

def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on device: CUDA's free memory, the host's MemAvailable; None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_models_fit(num_models: int, n_params: int, batch_values: int, device: torch.device) -> None:
    """Refuse, before any allocation, a model count whose weights, Adam moments, gradients and batches cannot fit.

    The estimate is a lower bound: K x 4 bytes x (4 x parameters + 3 x a batch's values); activations come on top.
    """
    need = int(num_models) * 4 * (4 * int(n_params) + 3 * int(batch_values))
    free = available_memory(device)
    if free is not None and need > free:
        raise PoddError(f"{num_models} models need at least {need / 2**30:.1f} GiB on {device} for their weights, "
                        f"optimiser state and batches ({free / 2**30:.1f} GiB available); use fewer models (--models)")


def train_models(x: Tensor, y: Tensor, x_test: Tensor, y_test: Tensor,
                  model_fn: Callable[[], nn.Module], num_models: int, eval_steps: tuple[int, ...],
                  batch: int, lr: float, augmentation: str, aug_mode: str, seed: int,
                  device: torch.device, progress: bool, vectorize: bool | None, epochs_mode: bool,
                  desc: str, return_params: bool, backend: str = "auto", compile_steps: str = "none",
                  autocast: str = "none", state_path: str | os.PathLike | None = None,
                  on_step: Callable[[int, int], None] | None = None) -> dict:
    """Train K fresh models on (x, y), test at eval_steps; inputs are already validated.

    With state_path, the training state (models, Adam, the generator, the sampler, results so far)
    is saved there atomically every tenth of the run and restored from there on the next call, so
    an interrupted evaluation continues with the same draws. on_step(step, total) follows progress.
    """
    t0 = time.perf_counter()
    init_seeds, g = eval_rng(seed, num_models)
    with torch.device("meta"):  # structure only; does not touch the global RNG
        base = model_fn()
    check_models_fit(num_models, sum(p.numel() for p in base.parameters()), min(batch, x.shape[0]) * x[0].numel(),
                     torch.device(device))
    backend = resolve_backend(backend, str(device), autocast=autocast)
    set_backend(base, backend == "fast")
    # vmap pays on a GPU; on the CPU it turns each conv into a grouped conv over strided tensors
    # and measured 2.6x slower than a loop over models (benchmarks/bench_eval_vmap.py), so by
    # default the K models are stacked only on CUDA. Both paths compute the same thing (tested).
    vectorized = (is_vmappable(base) and device.type == "cuda") if vectorize is None else bool(vectorize)
    if vectorized and not is_vmappable(base):
        raise PoddError("this model has batch norm with running stats and cannot be vmapped; "
                        "use vectorize=None or False")
    params, buffers = stacked_fresh(model_fn, init_seeds, device)
    params = {n: t.to(x.dtype) for n, t in params.items()}  # networks take the images' dtype
    buffers = {n: t.to(x.dtype) if t.is_floating_point() else t for n, t in buffers.items()}
    state = adam_init(params)
    x, y = x.to(device), y.to(device)
    n, k = x.shape[0], num_models
    bs = min(batch, n)
    perm, pos = None, n  # epoch sampler state
    by_step, losses = [], None
    grads_fn = _vmapped_grads if vectorized else _sequential_grads
    compiled = (vmapped_step(base, lr, autocast, compile_steps)
                if vectorized and compile_applies(compile_steps, device) else None)
    fast = backend == "fast"
    first, total = 1, eval_steps[-1]
    save_every = max(1, total // 10)
    if state_path is not None and Path(state_path).exists():
        from podd_lib.safety import load_torch_file

        saved = load_torch_file(Path(state_path), ("params", "buffers", "m", "v", "adam_step", "generator", "step"))
        params = {n: t.to(device) for n, t in saved["params"].items()}
        buffers = {n: t.to(device) for n, t in saved["buffers"].items()}
        state = type(state)(m={n: t.to(device) for n, t in saved["m"].items()},
                            v={n: t.to(device) for n, t in saved["v"].items()}, step=saved["adam_step"])
        g.set_state(saved["generator"])
        perm, pos, by_step, first = saved["perm"], saved["pos"], saved["by_step"], saved["step"] + 1
    bar = tqdm(total=total, initial=first - 1, desc=desc, disable=not _progress_on(progress), leave=False)
    for step in range(first, total + 1):
        if epochs_mode:
            if pos + bs > n:  # new epoch: fresh permutation per model, last partial batch dropped
                perm, pos = torch.rand(k, n, generator=g).argsort(dim=-1), 0
            idx, pos = perm[:, pos:pos + bs], pos + bs
        else:
            idx = random_batches(n, k, bs, g)
        idx = idx.to(device)
        xb = augment(x[idx], augmentation, g, mode=aug_mode)
        if compiled is not None:
            params, state, losses = compiled(params, buffers, state, xb, y[idx])
        else:
            grads, losses = grads_fn(base, params, buffers, xb, y[idx], autocast, fast)
            params, state = adam_step(params, grads, state, lr)
        bar.update(1)
        if step in eval_steps:
            acc = models_accuracy(base, params, buffers, x_test, y_test, vectorized, channels_last=fast)
            m, s = mean_std(acc)
            by_step.append({"step": step, "acc_pct": acc.tolist(), "mean_pct": m, "std_pct": s,
                            "train_loss": losses.detach().cpu().double().tolist()})
            bar.set_postfix(acc=f"{m:.2f}")
        if state_path is not None and step % save_every == 0 and step < total:
            atomic_torch_save({"step": step, "params": params, "buffers": buffers, "m": state.m, "v": state.v,
                               "adam_step": state.step, "generator": g.get_state(), "perm": perm, "pos": pos,
                               "by_step": by_step}, state_path)
        if on_step is not None:
            on_step(step, total)
    bar.close()
    result = {
        "vectorized": vectorized,
        "training": "vmap over stacked models" if vectorized else "loop over models",
        "backend": backend, "compile_steps": compile_steps if compiled is not None else "none", "autocast": autocast,
        "num_models": k, "batch_size": bs, "init_seeds": init_seeds,
        "std": STD_NOTE, "by_step": by_step,
        "final": {key: by_step[-1][key] for key in ("step", "mean_pct", "std_pct")},
        "seconds": time.perf_counter() - t0,
    }
    if return_params:
        result["params"], result["buffers"] = params, buffers
    return result


