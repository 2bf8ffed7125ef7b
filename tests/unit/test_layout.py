"""The library's layout: importing changes nothing, the algorithm registry, the speed backend switch, run keys."""

import dataclasses
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import podd_lib
from podd_lib.algorithms import REGISTRY
from podd_lib.config import ALGORITHMS, resolve_config
from podd_lib.errors import PoddError
from podd_lib.kit.experiments import config_key
from podd_lib.fast import resolve_backend
from podd_lib.models import InstanceNorm
from podd_lib.run import apply_backend, build_problem, distill, model_for
from tests.helpers import ORDER, fake_real, tiny_cfg

ROOT = Path(__file__).resolve().parents[2]


def all_modules() -> list[str]:
    """Every module of podd_lib, subpackages included."""
    found = pkgutil.walk_packages(podd_lib.__path__, prefix="podd_lib.")
    return ["podd_lib"] + sorted(m.name for m in found if not m.name.endswith("__main__"))


def test_every_module_is_found():
    names = all_modules()
    for expected in ("podd_lib.models", "podd_lib.run", "podd_lib.clip", "podd_lib.algorithms.base",
                     "podd_lib.algorithms.ratbptt", "podd_lib.fast.block", "podd_lib.fast.kernels",
                     "podd_lib.fast.runtime"):
        assert expected in names


def test_importing_every_module_leaves_the_environment_unchanged():
    imports = "; ".join(f"import {m}" for m in all_modules())
    code = f"import os; e = dict(os.environ); {imports}; assert dict(os.environ) == e, set(os.environ.items()) ^ set(e.items())"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}  # THP_MEM_ALLOC_ENABLE unset: a setdefault would show
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]


def test_enable_runtime_is_what_sets_the_allocator_variable():
    code = ("import os, podd_lib.fast as f; assert 'THP_MEM_ALLOC_ENABLE' not in os.environ; f.enable_runtime(); "
            "assert os.environ['THP_MEM_ALLOC_ENABLE'] == '1'")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    opt_out = subprocess.run([sys.executable, "-c", "import os, podd_lib.fast as f; f.enable_runtime(); "
                              "assert os.environ['THP_MEM_ALLOC_ENABLE'] == '0'"], cwd=ROOT,
                             env={**env, "THP_MEM_ALLOC_ENABLE": "0"}, capture_output=True, text=True, timeout=300)
    assert opt_out.returncode == 0, opt_out.stderr[-2000:]


# ----------------------------------------------------------------------------- the algorithm registry


def test_registry_names_every_configurable_algorithm():
    assert set(REGISTRY) == set(ALGORITHMS)


@pytest.mark.parametrize("name", ["ratbptt", "dm", "dc"])
def test_registry_builds_each_algorithm_from_a_config(name):
    cfg = tiny_cfg(algorithm=name)
    pb = build_problem(cfg, ORDER, 3)
    assert pb.algo.name == name and pb.algo.extra_leaves() == []


def test_an_unknown_algorithm_fails_in_one_line():
    from podd_lib.run import make_algorithm

    with pytest.raises(PoddError, match="unknown algorithm 'nope'; choose one of ratbptt"):
        make_algorithm(dataclasses.replace(tiny_cfg(), algorithm="nope"), None, None)  # past the config's check


# ----------------------------------------------------------------------------- the speed backend switch


def test_auto_backend_is_fast_on_the_cpu_and_reference_elsewhere():
    assert resolve_backend("auto", "cpu") == "fast"
    assert resolve_backend("auto", "cuda") == "reference"
    assert resolve_backend("auto", "cuda:1") == "reference"
    assert resolve_backend("auto", "cuda", "bfloat16") == "fast"  # bfloat16 convs are the fast block's
    assert resolve_backend("reference", "cpu") == "reference"
    assert resolve_backend("fast", "cuda") == "fast"


def test_backend_is_validated_and_not_hashed():
    base = resolve_config("cifar10", 1.0, "quick")
    assert base.backend == "auto"
    for backend in ("fast", "reference"):
        assert config_key(resolve_config("cifar10", 1.0, "quick", {"backend": backend})) == config_key(base)
    with pytest.raises(PoddError, match="backend must be one of auto, fast, reference"):
        resolve_config("cifar10", 1.0, "quick", {"backend": "turbo"})
    with pytest.raises(PoddError, match="conv_dtype=bfloat16 is a setting of the fast backend"):
        resolve_config("cifar10", 1.0, "quick", {"backend": "reference", "conv_dtype": "bfloat16"})


def test_reference_backend_runs_stock_layers_in_nchw_with_the_same_outputs(monkeypatch):
    import podd_lib.fast.block as block

    calls = []
    for name in ("fused_block", "instance_norm"):
        real_fn = getattr(block, name)
        monkeypatch.setattr(block, name, lambda *a, _f=real_fn, _n=name: calls.append(_n) or _f(*a))
    fast_cfg = apply_backend(resolve_config("cifar10", 1.0, "smoke"), "cpu")
    ref_cfg = apply_backend(resolve_config("cifar10", 1.0, "smoke", {"backend": "reference"}), "cpu")
    assert fast_cfg.backend == "fast" and fast_cfg.channels_last and fast_cfg.fused_blocks
    assert ref_cfg.backend == "reference"
    assert not (ref_cfg.channels_last or ref_cfg.fused_blocks or ref_cfg.cpu_kernels)
    fast, ref = model_for(fast_cfg, 3), model_for(ref_cfg, 3)
    ref.load_state_dict(fast.state_dict())
    assert not ref.fused_blocks and not ref.cpu_kernels
    assert all(not m.fast for m in ref.modules() if isinstance(m, InstanceNorm))
    x = torch.randn(2, 3, 32, 32)
    out_ref = ref(x)
    assert calls == []  # the reference network never touches podd_lib.fast
    torch.testing.assert_close(fast(x), out_ref, atol=1e-5, rtol=1e-5)
    assert "fused_block" in calls


def test_a_reference_run_records_its_backend_and_matches_the_fast_run(tmp_path):
    real = fake_real()
    runs = {}
    for backend in ("fast", "reference"):
        st = distill(tiny_cfg(steps=2, backend=backend), real, ORDER, tmp_path / backend, progress=False)
        written = json.loads((tmp_path / backend / "config.json").read_text())
        assert written["backend"] == backend and written["channels_last"] == (backend == "fast")
        runs[backend] = st.poster.detach()
    torch.testing.assert_close(runs["fast"], runs["reference"], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- run keys


# The paper's text where it differs from the authors' release: the `paper` profile's values before it
# took the release's (the text's values are the defaults and so hashed as before).
PAPER_TEXT = {"init": "normal", "curriculum_draw": "step", "clip_order": "text", "real_batches": "random", "keep": "last",
              "fixed_labels_form": "majority"}


@pytest.mark.parametrize("ipc, profile, over, key", [
    (1.0, "quick", {}, "96985d75b9fd"),  # the committed report's quick PoDD at 1 IPC
    (1.0, "quick", {"patch_grid": [5, 2], "poster_size": [64, 160]}, "2ea309f4e751"),  # its quick tiling
    (0.5, "paper", PAPER_TEXT, "23edd282e2ff"),  # the paper profile before it took the release's behaviour
    (0.5, "paper-text", {}, "3c8dd66e7848"),
    (0.5, "paper", {"keep": "last"}, "84340de30e71"),  # the release's init, curriculum draw, clipping, real batches
    (0.5, "paper", {}, "ed0589817cef"),  # ... and its poster selection (keep = "best_train")
    (1.0, "quick", {"algorithm": "dm"}, "4d42c3e62dc0"),
    (1.0, "quick", {"algorithm": "mtt"}, "fd656fdcf8a5"),
    (1.0, "quick", {"sampling": "dream"}, "18f53c124667"),
    (1.0, "paper", {**PAPER_TEXT, "conv_dtype": "bfloat16"}, "525d38d6d26e"),
    (1.0, "quick", {"backend": "reference", "fused_blocks": False, "cpu_kernels": False}, "96985d75b9fd"),
])
def test_run_keys_are_pinned(ipc, profile, over, key):
    assert config_key(resolve_config("cifar10", ipc, profile, over)) == key
