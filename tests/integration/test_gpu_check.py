"""The GPU check runs end to end on the CPU (--tiny), and the GPU levers work (or stay off) on the CPU."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_summary import summary
from podd_lib.config import Config, resolve_config
from podd_lib.errors import PoddError
from podd_lib.fast import resolve_backend
from podd_lib.kit.experiments import config_key

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.realdata
def test_gpu_check_tiny_runs_on_the_device_image_and_every_check_is_within_its_bound(tmp_path, cifar10_root):
    """Run as the device would: only the packages of its stock image importable (benchmarks/device_guard.py)."""
    data = cifar10_root / "cifar10"  # the suite's CIFAR-10 (shared copy, PODD_CIFAR10_ROOT or a download)
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "device_guard.py"), str(ROOT / "benchmarks" / "gpu_check.py"),
         "--tiny", "--device", "cpu", "--out", str(tmp_path), "--data-root", str(data)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
        env={"CI": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1"},
    )
    assert "ModuleNotFoundError" not in out.stderr and "ImportError" not in out.stderr, out.stderr[-3000:]
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    record = (tmp_path / "gpu_check.json").read_text()
    assert "ModuleNotFoundError" not in record and "ImportError" not in record, record
    assert summary(json.loads(record)).startswith(
        "gpu_check: environment ok, correctness ok, speed ok, fidelity ok | 16x6 ")
    res = json.loads(record)
    assert res["tool"] == "podd_lib gpu_check" and res["meta"]["tiny"]
    assert set(res) >= {"environment", "correctness", "speed", "fidelity"}
    assert res["environment"]["torch"] == torch.__version__
    checks = res["correctness"]["checks"]
    names = " ".join(c["name"] for c in checks)
    for what in ("fused block, double backward", "reference layers, forward", "meta-gradient, fast path",
                 "vmap vs loop", "patch extraction"):
        assert what in names
    for c in checks:
        assert c["rel_err"] <= c["bound"] == res["meta"]["bounds"][_bound_key(c["name"])], c
    assert res["correctness"]["all_ok"] and not res["correctness"]["error"]
    timed = [r for r in res["speed"]["rows"] if r.get("median_s")]
    assert {"outer step, reference layers (CUDA default)", "evaluation step, vmap"} <= {r["name"] for r in timed}
    runs = res["fidelity"]["runs"]
    assert [r["patches"] for r in runs] == ["16x6", "5x2"] and [r["paper"] for r in runs] == [56.73, 45.15]
    assert all(r["outer_steps"] >= 1 and 0 <= r["eval"][-1]["mean_pct"] <= 100 for r in runs)
    assert "| 16x6 |" in (tmp_path / "gpu_check.md").read_text()


def _bound_key(name: str) -> str:
    """The BOUNDS key of a correctness row."""
    for part, key in (("double backward", "double_backward"), ("backward", "backward"), ("forward", "forward"),
                      ("meta-gradient", "meta_gradient"), ("vmap", "vmap_vs_loop")):
        if part in name:
            return f"extraction_{key}" if "extraction" in name else key
    return "extraction_forward"


def test_gpu_check_refuses_bad_input_in_one_line(tmp_path):
    (tmp_path / "gpu_check.md").write_text("my notes\n")
    for args, msg in (([ "--data-root", str(tmp_path / "nope")], "does not exist"),
                      (["--data-root", str(tmp_path)], "was not written by this script"),
                      (["--data-root", str(tmp_path), "--parts", "speed,warp"], "unknown part")):
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path),
                              "--device", "cpu", *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert out.returncode != 0 and msg in out.stderr.strip().splitlines()[-1], out.stderr
    assert (tmp_path / "gpu_check.md").read_text() == "my notes\n"


# ----------------------------------------------------------------------------- the levers on the CPU

def test_autocast_is_hashed_only_when_on_and_compile_never():
    base = resolve_config("cifar10", 1.0, "quick")
    assert base.autocast == "none" and base.compile_steps == "none"
    assert config_key(resolve_config("cifar10", 1.0, "quick", {"autocast": "none"})) == config_key(base)
    assert config_key(resolve_config("cifar10", 1.0, "quick", {"autocast": "bfloat16"})) != config_key(base)
    for mode in ("default", "reduce-overhead"):
        assert config_key(resolve_config("cifar10", 1.0, "quick", {"compile_steps": mode})) == config_key(base)
    for bad, msg in (({"autocast": "float16"}, "autocast must be one of"),
                     ({"compile_steps": "max"}, "compile_steps must be one of"),
                     ({"autocast": "bfloat16", "backend": "fast"}, "runs RaT-BPTT on the reference layers"),
                     ({"autocast": "bfloat16", "algorithm": "dm"}, "runs RaT-BPTT on the reference layers")):
        with pytest.raises(PoddError, match=msg):
            resolve_config("cifar10", 1.0, "quick", bad)
    assert resolve_backend("auto", "cpu", autocast="bfloat16") == "reference"


def _one_step(over: dict) -> tuple[Config, torch.Tensor, dict]:
    """One smoke-sized RaT-BPTT outer step on the CPU: (resolved config, poster gradient, info)."""
    from podd_lib.algorithms.base import RealSampler, SyntheticSet, outer_grads
    from podd_lib.run import apply_backend, build_problem, initial_state

    cfg = resolve_config("cifar10", 1.0, "smoke", {"fixed_curriculum": 2, **over})
    pb = build_problem(cfg, [[9, 0, 2, 4, 3], [1, 8, 6, 7, 5]], 3, "cpu")
    st = initial_state(cfg, pb, 3, "cpu")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)
    loss, info = pb.algo.meta_loss(SyntheticSet(st.poster, st.Y, pb.labels, pb.geom), RealSampler(x, y, 10), st.gen, 0)
    outer_grads(st, loss)
    return apply_backend(cfg, "cpu"), st.poster.grad, info


def test_bfloat16_autocast_runs_on_the_cpu_and_changes_the_numbers_a_little():
    cfg32, g32, _ = _one_step({"backend": "reference"})
    cfg16, g16, _ = _one_step({"autocast": "bfloat16"})
    assert cfg16.backend == "reference" and torch.isfinite(g16).all()
    cos = float(torch.nn.functional.cosine_similarity(g32.flatten(), g16.flatten(), dim=0))
    assert 0.9 < cos < 0.999999


def test_compile_steps_is_off_on_the_cpu_and_recorded_so():
    cfg, g_on, _ = _one_step({"compile_steps": "reduce-overhead"})
    _, g_off, _ = _one_step({})
    assert cfg.compile_steps == "none"  # config.json says what ran
    assert torch.equal(g_on, g_off)


def test_compiled_plain_steps_trace_and_match_the_eager_steps():
    """torch.compile's graph capture (the "eager" backend: no code generation) of the plain step gives the eager result."""
    from podd_lib.algorithms.ratbptt import inner_steps
    from podd_lib.fast.compiled import plain_step
    from podd_lib.optim import adam_init
    from podd_lib.run import build_problem, initial_state

    cfg = resolve_config("cifar10", 1.0, "smoke", {"backend": "reference"})
    pb = build_problem(cfg, [[9, 0, 2, 4, 3], [1, 8, 6, 7, 5]], 3, "cpu")
    st = initial_state(cfg, pb, 3, "cpu")
    torch.manual_seed(0)
    p0 = {k: p.detach().clone().requires_grad_(True) for k, p in pb.model.named_parameters()}
    out = {}
    for name, fn in (("eager", None), ("compiled", plain_step(pb.model, pb.settings.inner_lr, "none", "default",
                                                                backend="eager"))):
        gen = torch.Generator().manual_seed(1)
        params, state = inner_steps(pb.model, dict(p0), adam_init({k: p.detach() for k, p in p0.items()}),
                                    st.poster.detach(), None, pb.labels, pb.geom, pb.settings, 3, gen, False, fn)
        assert state.step == 3 and all(p.requires_grad for p in params.values())
        out[name] = {k: p.detach() for k, p in params.items()}
    # A conv bias before instance norm has a zero gradient up to rounding noise, which Adam turns into
    # steps of +-lr of either sign: those are left out; every other parameter must agree.
    conv_bias = {f"features.{i}.bias" for i in range(0, 12, 4)}
    assert not torch.equal(out["eager"]["classifier.weight"], p0["classifier.weight"])
    for k in out["eager"]:
        if k not in conv_bias:
            # atol 1e-5: Adam divides by the gradient's root mean square, so a weight whose gradient is
            # near rounding noise moves a few 1e-6 either way (seen under a loaded machine: 1.3e-6)
            torch.testing.assert_close(out["compiled"][k], out["eager"][k], rtol=1e-5, atol=1e-5)


def test_compiled_vmapped_evaluation_step_matches_the_eager_step():
    from podd_lib import training as ev
    from podd_lib.fast.compiled import vmapped_step
    from podd_lib.models import make_model, set_backend, stacked_fresh
    from podd_lib.optim import adam_init, adam_step

    fn = lambda: make_model("convnet", 3, 10, 32, width=8)  # noqa: E731
    with torch.device("meta"):
        base = set_backend(fn(), False)
    params, buffers = stacked_fresh(fn, [0, 1])
    g = torch.Generator().manual_seed(0)
    xb, yb = torch.randn(2, 16, 3, 32, 32, generator=g), torch.softmax(torch.randn(2, 16, 10, generator=g), -1)
    grads, loss = ev._vmapped_grads(base, params, buffers, xb, yb)
    want, _ = adam_step(params, grads, adam_init(params), 1e-3)
    got, state, got_loss = vmapped_step(base, 1e-3, backend="eager")(params, buffers, adam_init(params), xb, yb)
    assert state.step == 1
    torch.testing.assert_close(got_loss, loss)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)


def test_evaluation_follows_the_backend_rule():
    from podd_lib.evaluate import EvalProtocol, train_and_test

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.softmax(torch.randn(8, 10, generator=g), -1)
    xt, yt = torch.randn(10, 3, 32, 32, generator=g), torch.randint(0, 10, (10,), generator=g)
    p = EvalProtocol(num_models=2, steps=(2,), width=8)
    kw = dict(progress=False, vectorize=False)
    fast = train_and_test(x, y, xt, yt, p, **kw)
    ref = train_and_test(x, y, xt, yt, replace(p, backend="reference"), **kw)
    assert fast["backend"] == "fast" and ref["backend"] == "reference"
    assert train_and_test(x, y, xt, yt, replace(p, autocast="bfloat16"), **kw)["backend"] == "reference"
    assert abs(fast["final"]["mean_pct"] - ref["final"]["mean_pct"]) < 1e-9  # same maths
    with pytest.raises(PoddError, match="backend must be one of"):
        replace(p, backend="turbo")
