"""A plan's estimate follows each run's size: a tiling's outer step costs a fraction of a poster's."""

import json
from collections import Counter

import pytest

from podd_lib.kit import plan


def test_interpolate_is_linear_between_sizes_and_flat_outside():
    pts = [(10, 1.0), (40, 2.0), (96, 5.0), (96, 6.0)]
    assert plan.interpolate(pts, 10) == 1.0 and plan.interpolate(pts, 25) == pytest.approx(1.5)
    assert plan.interpolate(pts, 96) == 5.5 and plan.interpolate(pts, 500) == 5.5 and plan.interpolate(pts, 4) == 1.0
    assert plan.interpolate([], 10) is None and plan.interpolate(pts, 0) is None


def result(folder, n_patches, sps, eval_seconds):
    """A cached distill result with the fields measured_rates reads."""
    folder.mkdir(parents=True)
    r = {"profile": "quick", "config": {"algorithm": "ratbptt", "bs_d": 96}, "seconds_per_step_median": sps,
         "geometry": {"n_patches": n_patches, "n_classes": 10},
         "eval": {"soft": {"seconds": eval_seconds, "num_models": 4, "by_step": [{"step": 300}]}}}
    (folder / "result.json").write_text(json.dumps(r))


def test_measured_rates_by_size_make_a_tiling_cheaper_than_a_poster(tmp_path):
    result(tmp_path / "runs" / "cifar10" / "tiling", 10, 1.0, 60.0)
    result(tmp_path / "runs" / "cifar10" / "poster", 96, 5.0, 240.0)
    rates = plan.rates_for(tmp_path, "quick")
    assert sorted(rates["step_points"]["ratbptt"]) == [(10, 1.0), (96, 5.0)]
    run = {"algorithm": "ratbptt", "steps": 100, "eval_steps": 300, "eval_models": 4, "eval_phases": 1}
    tiling = plan.estimate({**run, "inner_batch": 10, "train_size": 10}, rates)
    poster = plan.estimate({**run, "inner_batch": 96, "train_size": 96}, rates)
    assert tiling == pytest.approx(100 * 1.0 + 60.0) and poster == pytest.approx(100 * 5.0 + 240.0)
    given = plan.rates_for(tmp_path, "quick", seconds_per_step=2.0)  # a rate given on the command line wins
    assert plan.estimate({**run, "inner_batch": 10, "train_size": 10}, given) == pytest.approx(200 + 60.0)


def test_planned_runs_carry_their_sizes():
    p = plan.build_plan("smoke", only="03", notebooks_dir="notebooks", out_dir="../nonexistent-outputs")
    sizes = {r["tag"]: (r["train_size"], r["inner_batch"]) for r in p["runs"]}
    assert sizes["podd"] == (96, 96) and sizes["ratbptt"] == (10, 10) and sizes["random"] == (10, 0)
    assert sizes["full"] == (plan.FULL_BATCH, 0)


def test_notebook_09_plans_every_set_on_the_profiles_architectures():
    from pathlib import Path

    nbs = Path(__file__).resolve().parents[2] / "notebooks"
    p = plan.build_plan("quick", only="09", notebooks_dir=nbs, out_dir="../nonexistent-outputs")
    evals = [r for r in p["runs"] if r["kind"] == "arch"]
    assert sorted({r["arch"] for r in evals}) == ["convnet", "vgg11"]  # quick leaves ResNet-18 and AlexNet out
    assert len(evals) == 16 and all(r["eval_models"] == 2 and r["eval_steps"] == 100 for r in evals)
    # the poster and tiling its claim compares at every seed of the profile, the other two sets at the first
    per_set = Counter((r["tag"], r["ipc"]) for r in evals if r["arch"] == "vgg11")
    assert per_set == {("podd", 1.0): 3, ("ratbptt", 1.0): 3, ("podd", 0.5): 1, ("random", 0.5): 1}
    sets = [r for r in p["runs"] if r["kind"] != "arch"]
    names = [Path(r["folder"]).name for r in sets]
    assert names[0] == "ipc1-96985d75b9fd" and names[3] == "ipc1-2ea309f4e751"  # notebook 03's, seed 0
    assert all(Path(r["folder"]).parent.parent.name in [Path(x["folder"]).name for x in sets] for r in evals)
    cost = {(r["arch"], r["tag"], r["ipc"]): r["estimate_s"] for r in evals}
    assert 0 < cost[("convnet", "podd", 1.0)] < cost[("vgg11", "podd", 1.0)]
    paper = plan.build_plan("paper", only="09", notebooks_dir=nbs, out_dir="../nonexistent-outputs")
    evals = [r for r in paper["runs"] if r["kind"] == "arch"]
    assert sorted({r["arch"] for r in evals}) == ["alexnet", "resnet18", "vgg11"]  # the ConvNet's is the sets' own
    assert all(r["eval_models"] == 8 and r["eval_steps"] == 2000 for r in evals)
    cost = {(r["arch"], r["tag"], r["ipc"]): r["estimate_s"] for r in evals}
    assert cost[("vgg11", "podd", 1.0)] < cost[("alexnet", "podd", 1.0)] < cost[("resnet18", "podd", 1.0)]
