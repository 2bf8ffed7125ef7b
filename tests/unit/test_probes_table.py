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


def test_the_verdict_needs_every_seed_to_beat_by_more_than_the_pooled_spread():
    rows = [row("wins", "poster", s, 31.0) for s in (0, 1)] + [row("wins", "tiling", s, 29.0) for s in (0, 1)]
    rows += [row("mixed", "poster", 0, 31.0), row("mixed", "tiling", 0, 29.0),
             row("mixed", "poster", 1, 29.0), row("mixed", "tiling", 1, 29.2)]
    rows += [row("close", "poster", s, 29.3) for s in (0, 1)] + [row("close", "tiling", s, 29.0) for s in (0, 1)]
    rows += [row("one", "poster", 0, 35.0), row("one", "tiling", 0, 20.0)]
    table = probes.render_table(rows)
    assert verdict(table, "wins") == "yes" and verdict(table, "mixed") == "no"
    assert verdict(table, "close") == "no"  # 0.3 points is inside the spread of 0.5
    assert verdict(table, "one").startswith("pending")
    assert "+2.0 [+2.0, +2.0]" in table
    assert "Probes with 2 or more seeds: 3. The poster beats the tiling on every seed in: wins." in table
    assert table.rstrip().endswith("No profile runs probe wins's settings.")


def test_a_shown_probe_names_the_profile_that_runs_it():
    assert probes.profiles_running(probes.PROBES["w128-learned"][0]) == ["cpu-long"]
    assert probes.profiles_running({"width": 64}) == []
