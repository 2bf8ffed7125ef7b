"""benchmarks/probes.py renders its verdicts from the recorded rows by the report's rule."""

import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("probes", Path(__file__).resolve().parents[2] / "benchmarks" / "probes.py")
probes = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(probes)


def row(probe, rep, seed, mean, std=0.5):
    return {"probe": probe, "representation": rep, "seed": seed, "overrides": {}, "acc_mean": mean, "acc_std": std,
            "outer_steps": 100, "seconds_per_step": 1.0, "wall_seconds": 60.0, "command": f"run {probe}"}


def verdict(table: str, probe: str) -> str:
    line = next(x for x in table.splitlines() if x.startswith(f"| {probe} |"))
    return line.split(" | ")[5]


def test_the_verdict_is_the_paired_gap_over_three_seeds_against_twice_its_standard_error():
    rows = [row("wins", "poster", s, m) for s, m in ((0, 31.0), (1, 30.5), (2, 31.5))]
    rows += [row("wins", "tiling", s, 29.0) for s in (0, 1, 2)]  # gaps +2.0, +1.5, +2.5: mean 2.0, s.e. 0.29
    rows += [row("noisy", "poster", s, m) for s, m in ((0, 33.0), (1, 28.0), (2, 30.0))]
    rows += [row("noisy", "tiling", s, 29.0) for s in (0, 1, 2)]  # gaps +4, -1, +1: mean 1.3, s.e. 1.45
    rows += [row("two", "poster", s, 35.0) for s in (0, 1)] + [row("two", "tiling", s, 20.0) for s in (0, 1)]
    table = probes.render_table(rows)
    assert verdict(table, "wins") == "shown" and verdict(table, "noisy") == "not shown"
    assert verdict(table, "two") == "too few seeds"  # +15 on both seeds, but two seeds decide nothing
    assert "+2.0 \u00b1 0.3 s.e. (n = 3: +2.0, +1.5, +2.5)" in table
    assert "Probes with 3 or more seeds: 2. The poster beats the tiling by the rule in: wins." in table
    assert table.rstrip().endswith("No profile runs probe wins's settings.")


def test_a_shown_probe_names_the_profile_that_runs_it():
    assert probes.profiles_running(probes.PROBES["w128-learned"][0]) == ["cpu-long"]
    assert probes.profiles_running({"width": 64}) == []
