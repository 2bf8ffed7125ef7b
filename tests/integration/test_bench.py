"""The distillation benchmark runs in its smallest setting (a smoke test: no timing assertions)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_distill_smoke_prints_one_json_line_per_part():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_distill.py"), "--setting", "smoke"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={"CI": "1", "PATH": "/usr/bin:/bin",
                                                                   "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["part"] for r in rows] == ["extraction", "outer_step", "evaluation"]
    for r in rows:
        assert r["median_s"] > 0 and r["peak_mem_gb"] > 0 and r["setting"] == "smoke"
    assert rows[2]["speedup_vs_sequential"] > 0 and 0 < rows[2]["sequential_conv_share"] < 1


def test_bench_distill_before_mode_and_malloc_option_run():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_distill.py"), "--setting", "smoke", "--parts", "outer_step",
         "--before", "--keep-freed-memory"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={"CI": "1", "PATH": "/usr/bin:/bin",
                                                                   "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (row,) = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert row["before"] and row["block"] == "layers" and row["real_chunk"] == 0 and row["thp"] == "0"
    assert row["channels_last"] is False


def test_bench_distill_phases_conv_dtype_and_peak_parts_run():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_distill.py"), "--setting", "smoke", "--parts",
         "phases,conv_dtype,peak"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={"CI": "1", "PATH": "/usr/bin:/bin",
                                                                   "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    phases, dtype, peak = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert peak["matmul_gflops"] > 0 and peak["conv_gflops"] > 0
    assert all(phases[k] > 0 for k in ("plain_s", "window_s", "real_s", "backward_s"))
    assert dtype["cos_float32_rerun"] > 0.99999 and 0.5 < dtype["cos_bfloat16"] < dtype["cos_float32_rerun"]


def test_bench_distill_rejects_a_memory_limit_torch_cannot_start_under():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_distill.py"), "--setting", "smoke", "--memory-limit-gb", "1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={"CI": "1", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 2 and "--memory-limit-gb must be at least 8" in out.stderr.strip().splitlines()[-1]
