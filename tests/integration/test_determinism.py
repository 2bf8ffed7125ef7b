"""Bitwise determinism on the CPU at a fixed thread count: the same command gives the same poster.

The end-to-end tests run the real `podd distill` CLI on the shared CIFAR-10 with 2 threads while a
busy process occupies a core, so that the threads' timing varies from run to run; any sum whose
order followed the thread timing would show up as a last-bit difference (and grow over the steps).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from podd_lib.fast import kernels
from podd_lib.config import resolve_config
from podd_lib.errors import PoddError
from podd_lib.kit.experiments import config_key
from podd_lib.poster import extract_windows, make_geometry, patch_offsets
from podd_lib.determinism import deterministic_mode

REPO_ROOT = Path(__file__).resolve().parents[2]
THREADS = 2
STEPS = 3


def _env() -> dict[str, str]:
    """The environment of a CLI run: 2 OpenMP / torch threads, no progress bars."""
    return {**os.environ, "OMP_NUM_THREADS": str(THREADS), "CI": "1", "PYTHONPATH": str(REPO_ROOT)}


def _distill_cmd(root: Path, out: Path, *extra: str) -> list[str]:
    """`podd distill` at the smoke profile on CIFAR-10, 0.5 IPC (learned labels), STEPS steps."""
    return [sys.executable, "-m", "podd_lib", "distill", "--dataset", "cifar10", "--ipc", "0.5", "--profile", "smoke",
            "--steps", str(STEPS), "--seed", "3", "--data-root", str(root), "--out", str(out), *extra]


def _run(cmd: list[str]) -> None:
    """Run a CLI command to the end; fail with its stderr otherwise."""
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]


def _outputs(out: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(poster, Y, patch labels) of a finished run folder."""
    poster = torch.load(out / "poster.pt", weights_only=False)["poster"]
    labels = torch.load(out / "labels.pt", weights_only=False)
    return poster, labels["Y"], labels["patch_labels"]


@pytest.fixture(scope="module")
def busy_core():
    """A process that keeps one core busy for the module's CLI runs (it stops by itself if pytest dies)."""
    spin = "import os, time\nparent, end = os.getppid(), time.time() + 1800\nwhile os.getppid() == parent and time.time() < end: pass"
    proc = subprocess.Popen([sys.executable, "-c", spin])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def three_runs(cifar10_root, busy_core, tmp_path_factory) -> list[Path]:
    """The same smoke distillation three times with 2 threads while a core is busy."""
    base = tmp_path_factory.mktemp("determinism")
    outs = [base / f"s{i}" for i in range(3)]
    for out in outs:
        _run(_distill_cmd(cifar10_root, out))
    return outs


def test_cli_runs_use_two_threads():
    code = "import torch; print(torch.get_num_threads())"
    res = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == str(THREADS)


@pytest.mark.realdata
@pytest.mark.slow
def test_three_runs_under_load_give_bitwise_equal_posters_and_labels(three_runs):
    first = _outputs(three_runs[0])
    for out in three_runs[1:]:
        for want, got in zip(first, _outputs(out)):
            assert torch.equal(want, got), float((want - got).abs().max())
    rows = list(csv.DictReader(open(three_runs[0] / "metrics.csv")))
    assert len(rows) == STEPS and all(float(r["grad_norm"]) > 0 for r in rows)  # the poster did move


@pytest.mark.realdata
@pytest.mark.slow
def test_kill_9_and_resume_gives_a_bitwise_equal_poster(three_runs, cifar10_root, busy_core, tmp_path):
    out = tmp_path / "killed"
    ck = out / "checkpoint.pt"
    proc = subprocess.Popen(_distill_cmd(cifar10_root, out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        while not ck.exists() and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # as soon as the first checkpoint is there
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {proc.stderr.read()[-2000:]}"
    assert torch.load(ck, weights_only=False)["step"] < STEPS and not (out / "poster.pt").exists()
    _run(_distill_cmd(cifar10_root, out, "--resume"))
    for want, got in zip(_outputs(three_runs[0]), _outputs(out)):
        assert torch.equal(want, got), float((want - got).abs().max())


def test_smoke_profile_runs_the_compiled_kernels_and_the_fused_block(monkeypatch):
    from podd_lib.algorithms.base import RealSampler
    from podd_lib.run import build_problem, initial_state
    from podd_lib.algorithms.ratbptt import outer_step

    if kernels._compiler() is None:
        pytest.skip("no C++ compiler on this machine: the PyTorch ops run instead")
    calls = {"block_forward": 0, "block_zgrad": 0, "block_double": 0}
    for name in calls:
        def counted(*args, _f=getattr(kernels, name), _name=name, **kw):
            calls[_name] += 1
            return _f(*args, **kw)
        monkeypatch.setattr(kernels, name, counted)
    cfg = resolve_config("cifar10", 0.5, "smoke", {"seed": 3})
    assert cfg.fused_blocks and cfg.cpu_kernels and cfg.channels_last and cfg.width == 8
    pb = build_problem(cfg, [[9, 0, 2, 4, 3], [1, 8, 6, 7, 5]], 3)
    st = initial_state(cfg, pb, 3)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 3, 32, 32, generator=g), torch.arange(10).repeat(10)
    with deterministic_mode(cfg.deterministic):
        outer_step(st, pb.model, pb.labels, pb.geom, x, y, pb.settings)
    assert kernels.load() is not None and all(n > 0 for n in calls.values()), calls


def test_patch_gather_gradient_is_bitwise_repeatable_with_two_threads():
    geom = make_geometry(1.0, 10, (32, 32), (5, 2), (16, 6))  # 96 overlapping patches
    oy, ox = patch_offsets(geom)
    grad = torch.randn(96, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    poster = torch.randn(3, geom.d_h, geom.d_w, requires_grad=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        got = [torch.autograd.grad(extract_windows(poster, oy, ox, 32, 32), poster, grad)[0] for _ in range(5)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(got[0], g) for g in got[1:])
    want = torch.zeros(3, geom.d_h, geom.d_w, dtype=torch.float64)  # the sum over patches, one by one
    for b in range(96):
        want[:, oy[b]:oy[b] + 32, ox[b]:ox[b] + 32] += grad[b].double()
    assert float((got[0] - want).abs().max()) < 1e-5


def test_deterministic_mode_sets_the_flags_and_restores_them(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark, torch.backends.mkldnn.deterministic,
              torch.utils.deterministic.fill_uninitialized_memory)
    with deterministic_mode(True, "cuda"):  # sets flags only: runs without a GPU
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.backends.mkldnn.deterministic
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    after = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, torch.backends.mkldnn.deterministic,
             torch.utils.deterministic.fill_uninitialized_memory)
    assert after == before and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    with deterministic_mode(True, "cpu"):
        assert torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    with deterministic_mode(False, "cuda"):
        assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_importing_podd_lib_sets_no_determinism_flag():
    code = ("import torch, podd_lib, podd_lib.determinism, podd_lib.run; "
            "print(torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert res.stdout.split() == ["False", "False"], res.stderr


def test_deterministic_is_on_by_default_a_boolean_and_not_hashed():
    cfg = resolve_config("cifar10", 0.5, "smoke")
    assert cfg.deterministic is True
    assert config_key(cfg) == config_key(cfg.replace(deterministic=False))
    with pytest.raises(PoddError, match="deterministic must be true or false"):
        resolve_config("cifar10", 0.5, "smoke", {"deterministic": "yes"})
