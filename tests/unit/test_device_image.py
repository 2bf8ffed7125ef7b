"""The GPU device's stock image: the import guard, the method core under it, the summary line, the carried size."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_summary import summary

ROOT = Path(__file__).resolve().parents[2]
GUARD = ROOT / "benchmarks" / "device_guard.py"
# Installed here for the notebooks, the cluster or CLIP, absent from the device's image.
NOT_ON_THE_DEVICE = ("pydantic", "submitit", "papermill", "nbval", "open_clip", "ipywidgets")
# The SLURM executor needs submitit by design; it never runs on the device.
NEEDS_MORE_THAN_THE_IMAGE = {"podd_lib.kit.jobs", "podd_lib.kit.runner"}


def guarded(code: str) -> subprocess.CompletedProcess:
    """Run Python code under the device guard, from the repository root."""
    return subprocess.run([sys.executable, str(GUARD), "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_the_package_list_is_dated_and_names_the_image():
    text = (ROOT / "benchmarks" / "device_packages.txt").read_text()
    assert re.search(r"as read \d{4}-\d{2}-\d{2}", text)
    names = {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}
    assert {"torch", "torchvision", "numpy", "pillow", "tqdm", "filelock"} <= names
    assert not names & {"pydantic", "submitit", "papermill", "open-clip-torch"}


def test_the_guard_refuses_a_package_the_device_lacks_and_allows_the_image():
    lacking = next((m for m in NOT_ON_THE_DEVICE if importlib.util.find_spec(m)), None)
    if lacking is None:
        pytest.skip("none of the packages the device lacks is installed here")
    refused = guarded(f"import {lacking}")
    assert refused.returncode != 0 and "the device's image lacks" in refused.stderr, refused.stderr[-2000:]
    allowed = guarded("import numpy, torch, PIL, tqdm, podd_lib.config; print('ok')")
    assert allowed.returncode == 0 and allowed.stdout.strip() == "ok", allowed.stderr[-2000:]


def test_every_module_of_the_kit_but_the_slurm_executor_imports_on_the_device_image():
    code = ("import importlib, pkgutil, podd_lib\n"
            "for m in pkgutil.walk_packages(podd_lib.__path__, 'podd_lib.'):\n"
            "    try:\n"
            "        importlib.import_module(m.name)\n"
            "    except ImportError as e:\n"
            "        print(m.name, e)\n")
    out = guarded(code)
    assert out.returncode == 0, out.stderr[-2000:]
    failed = {line.split()[0] for line in out.stdout.splitlines() if line.strip()}
    assert failed == NEEDS_MORE_THAN_THE_IMAGE, out.stdout


# ----------------------------------------------------------------------------- the summary line

def _record(**parts) -> dict:
    """A gpu_check.json record with every part ok unless overridden."""
    runs = [{"patches": "16x6", "paper": 56.73, "outer_steps": 500,
             "eval": [{"step": 300, "mean_pct": 50.0, "std_pct": 0.5}, {"step": 2000, "mean_pct": 55.25, "std_pct": 0.4}]},
            {"patches": "5x2", "paper": 45.15, "skipped": "out of time"}]
    rec = {"environment": {"torch": "2.11.0"}, "correctness": {"all_ok": True, "checks": []},
           "speed": {"rows": [{"name": "a", "median_s": 0.1}, {"name": "b", "note": "skipped, out of time"}]},
           "fidelity": {"runs": runs}}
    rec.update(parts)
    return rec


def test_the_summary_line_says_each_part_and_the_fidelity_beside_the_paper():
    line = summary(_record())
    assert "\n" not in line
    assert line.startswith("gpu_check: environment ok, correctness ok, speed ok, fidelity ok | ")
    assert "16x6 55.25 ± 0.40 % @2000 after 500 outer steps (paper 56.73)" in line
    assert "5x2 skipped (paper 45.15)" in line


def test_the_summary_line_names_failed_and_skipped_parts():
    line = summary(_record(correctness={"all_ok": False, "error": "meta: ModuleNotFoundError: x"},
                           speed={"rows": [{"name": "a", "note": "RuntimeError: boom"}]},
                           fidelity={"error": "ModuleNotFoundError: x", "runs": []}))
    assert line.startswith("gpu_check: environment ok, correctness failed, speed failed, fidelity failed")
    rec = _record()
    del rec["speed"]
    assert "speed skipped" in summary(rec)
    assert summary(None).endswith("no gpu_check.json: the check did not start")


# ----------------------------------------------------------------------------- the carried size

def test_the_carried_size_is_printed_and_over_the_limit_fails(tmp_path):
    script = ROOT / "scripts" / "carried_size.py"
    ok = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert ok.returncode == 0 and re.fullmatch(r"carried: working tree [\d.]+ MiB \+ gpu_data [\d.]+ MiB = [\d.]+ MiB "
                                               r"\(limit 60 MiB\)\n", ok.stdout), ok.stdout + ok.stderr
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "big.bin").write_bytes(b"x" * 2**20)
    (tmp_path / "gpu_data").mkdir()
    (tmp_path / "gpu_data" / "subset.zip").write_bytes(b"x" * 2**20)
    over = subprocess.run([sys.executable, str(script), "--root", str(tmp_path), "--limit-mib", "1.5"],
                          capture_output=True, text=True, timeout=60)
    assert over.returncode == 1 and "= 2.0 MiB (limit 1.5 MiB)" in over.stdout, over.stdout + over.stderr
    assert over.stderr.count("\n") == 1 and "over the 1.5 MiB limit" in over.stderr
