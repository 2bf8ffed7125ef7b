"""configs/runs.toml: which runs each profile's notebooks make; a notebook parameter wins."""

import pytest

from podd_lib.config import run_list
from podd_lib.errors import PoddError
from podd_lib.kit import paper, studies


def test_smoke_makes_the_ends_and_paper_the_full_lists():
    assert run_list("paper") == {} and run_list("paper-text") == {}
    assert studies.figure6_grids("paper") == [list(g) for g in paper.FIGURE6] and len(paper.FIGURE6) == 7
    assert studies.figure6_grids("smoke") == [[5, 2], [16, 6]]
    assert studies.class_orders("paper") == ["paper"] + [f"random:{k}" for k in range(1, 6)]
    assert studies.class_orders("smoke") == ["paper", "random:1", "random:2"]
    assert len(studies.algorithm_plan(["ratbptt", "mtt"], ["tiling", "poster"], profile="paper")) == 6  # MTT: no DREAM


def test_a_notebook_parameter_wins_over_the_run_list():
    assert studies.figure6_grids("smoke", [[8, 3]]) == [[8, 3]]
    assert studies.class_orders("smoke", 4)[-1] == "random:4"
    assert studies.algorithm_plan(["dm"], ["poster"], ["dream"], "smoke") == [("dm", "poster", "dream")]


def test_an_unknown_profile_is_one_line():
    with pytest.raises(PoddError, match="unknown profile"):
        run_list("fast")


def test_cpu_long_is_quick_at_width_128_with_learned_labels():
    from podd_lib.config import profile_out_dir, profile_overrides, resolve_config

    quick, long = profile_overrides("quick", "cifar10"), profile_overrides("cpu-long", "cifar10")
    assert "extends" not in long
    assert {k: v for k, v in long.items() if quick.get(k) != v} == {"width": 128, "labels": "learned"}
    for ipc in (1.0, 0.5):
        cfg = resolve_config("cifar10", ipc, "cpu-long")
        assert cfg.width == 128 and cfg.label_kind == "learned" and cfg.steps == quick["steps"]
    assert profile_out_dir("../outputs", "cpu-long").endswith("outputs/cpu-long")
    assert profile_out_dir("../outputs", "quick") == "../outputs"


def test_cpu_long_thins_the_run_list():
    assert studies.figure6_grids("cpu-long") == [[5, 2], [10, 4], [16, 6]]
    assert studies.class_orders("cpu-long") == ["paper", "random:1", "random:2", "random:3"]
    assert studies.algorithm_plan(["dm"], ["tiling", "poster"], profile="cpu-long") == [
        ("dm", "tiling", "random"), ("dm", "poster", "random")]


def test_the_shell_entry_points_accept_every_profile():
    import re
    from pathlib import Path

    from podd_lib.config import PROFILES

    root = Path(__file__).resolve().parents[2]
    for script in ("run_all.sh", "scripts/lab.sh"):
        cases = re.findall(r"^\s*([a-z|-]+)\) ;;$", (root / script).read_text(), re.M)
        assert "|".join(PROFILES) in cases, script
