"""benchmarks/probes.py renders its verdicts from the recorded rows by the report's rule."""

import importlib.util
from pathlib import Path

import pytest

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
    assert "Probes with 3 or more seeds: 2; settled with fewer: 0; still open: 1. The poster beats the tiling by the " \
           "rule in: wins." in table
    assert table.rstrip().endswith("No profile runs probe wins's settings.")


def test_a_shown_probe_names_the_profile_that_runs_it():
    assert probes.profiles_running(probes.PROBES["w128-learned"][0]) == ["cpu-long"]
    assert probes.profiles_running({"width": 64}) == []


def test_a_probe_whose_first_seed_rules_out_the_rule_is_settled_early():
    rows = [row("lags", "poster", 0, 28.0), row("lags", "tiling", 0, 28.5)]
    rows += [row("leads", "poster", 0, 29.0), row("leads", "tiling", 0, 28.5)]
    table = probes.render_table(rows)
    assert verdict(table, "lags") == "not shown, settled early" and verdict(table, "leads") == "too few seeds"
    assert "Probes with 3 or more seeds: 0; settled with fewer: 1; still open: 1." in table


@pytest.fixture
def fake_probe(tmp_path, monkeypatch):
    """A three-seed probe whose runs are faked: poster and tiling accuracies per seed come from `accs`."""
    from podd_lib.kit import experiments

    monkeypatch.setattr(probes, "ROWS", tmp_path / "probes.jsonl")
    monkeypatch.setitem(probes.PROBES, "fake", ({"lr": 0.02}, (0, 1, 2)))
    calls, accs = [], {}
    tiling_keys = set(probes.tiling())

    def run(dataset, ipc, profile, out_dir, overrides, *args, **kwargs):
        rep = "tiling" if tiling_keys <= set(overrides) else "poster"
        calls.append((rep, overrides["seed"]))
        acc = accs[rep][overrides["seed"]]
        return {"summary": {"soft": {"mean": acc, "std": 0.5, "step": 300}},
                "eval": {"soft": {"by_step": [{"acc_pct": [acc]}]}}, "steps": 100,
                "seconds_per_step_median": 1.0, "config_key": "k", "computed_on": {"threads": 1}}

    monkeypatch.setattr(experiments, "distill_and_evaluate", run)
    return calls, accs


def test_run_probe_stops_once_no_further_seed_could_make_it_shown(fake_probe):
    calls, accs = fake_probe
    accs.update(poster={0: 30.0, 1: 27.0, 2: 31.0}, tiling={0: 29.0, 1: 28.0, 2: 29.0})  # gaps +1, -1, +2
    rows = probes.run_probe("fake", "cpu")
    assert calls == [("poster", 0), ("tiling", 0), ("poster", 1), ("tiling", 1)]  # seed 1's -1 settles it
    assert [r["computed_on"] for r in rows] == [{"threads": 1}] * 4
    probes.run_probe("fake", "cpu", early_stop=False)
    assert calls[4:] == [("poster", 2), ("tiling", 2)]  # --all-seeds runs the rest, and nothing twice


def test_run_probe_runs_every_seed_while_the_poster_leads(fake_probe):
    calls, accs = fake_probe
    accs.update(poster={0: 30.0, 1: 30.5, 2: 31.0}, tiling={0: 29.0, 1: 29.0, 2: 29.0})
    probes.run_probe("fake", "cpu")
    assert len(calls) == 6 and verdict(probes.render_table(probes.read_rows()), "fake") == "shown"


def test_the_probe_files_are_result_files_for_the_kit_commit():
    """A probe's rows do not mark the next run's kit commit '+dirty' (podd_lib.determinism.RESULT_PATHS)."""
    from podd_lib.determinism import RESULT_PATHS

    root = Path(__file__).resolve().parents[2]
    for path in (probes.ROWS, probes.TABLE):
        assert path.relative_to(root).as_posix() in RESULT_PATHS
