"""The notebooks' run cache (kit.experiments), their session (kit.session) and the experiment plans (kit.studies)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from podd_lib import kit
from podd_lib.config import resolve_config, tiling_overrides
from podd_lib.errors import PoddError
from podd_lib.kit import experiments, studies

TILING = {"patch_grid": [5, 2], "poster_size": [64, 160]}
MTT_TILING = {**TILING, "algorithm": "mtt", "sampling": "random", "init": "normal", "seed": 0,
              "experts_root": "outputs/experts"}

# Run folders of configs as the committed results name them (outputs/report.md, outputs/results/*.json):
# a changed key would orphan every cached result, so these must never change.
PINNED = [
    ("cifar10", 1.0, "quick", {"seed": 0}, "ipc1-96985d75b9fd"),  # PoDD at 1 IPC (notebooks 00, 02, 03, 06)
    ("cifar10", 1.0, "quick", {**TILING, "seed": 0}, "ipc1-2ea309f4e751"),  # the RaT-BPTT tiling
    ("cifar10", 0.3, "quick", {"seed": 0}, "ipc0.3-3cf6a1eb1caa"),  # learned labels
    ("cifar10", 10, "quick", {"per_class_posters": True, "labels": "fixed", "patch_grid": [10, 10], "seed": 0},
     "ipc10-3190f7f5f5d5"),  # figure 9
    ("cifar10", 1.0, "quick", {"algorithm": "dm", "sampling": "dream", "init": "normal", "seed": 0},
     "ipc1-daae3d029b23"),  # DM on the poster with DREAM batches
    ("cifar10", 1.0, "quick", MTT_TILING, "ipc1-3446fcf2c7ce"),  # MTT on the tiling (experts_root is not hashed)
    ("cifar10", 1.0, "smoke", {"seed": 0}, "ipc1-156e2e1e7881"),
    # the paper profile with the paper text's init, curriculum draw, clipping order and real batches
    ("cifar100", 0.3, "paper", {"init": "normal", "curriculum_draw": "step", "clip_order": "text",
                                "real_batches": "random", "keep": "last", "seed": 0}, "ipc0.3-7c997a1f2a23"),
]


@pytest.mark.parametrize("dataset,ipc,profile,overrides,folder", PINNED)
def test_run_folders_are_pinned(dataset, ipc, profile, overrides, folder):
    assert experiments.run_folder(resolve_config(dataset, ipc, profile, overrides)) == folder


def test_tiling_overrides_are_the_pinned_tiling():
    assert tiling_overrides("cifar10", "quick") == TILING


def test_only_hashed_settings_change_the_key():
    base = experiments.config_key(resolve_config("cifar10", 1.0, "quick", {"seed": 0}))
    for volatile in ({"checkpoint_every": 7}, {"device": "cuda"}, {"progress": False}, {"real_chunk": 64}):
        assert experiments.config_key(resolve_config("cifar10", 1.0, "quick", {"seed": 0, **volatile})) == base
    for hashed in ({"seed": 1}, {"steps": 7}, {"width": 16}, {"labels": "learned"}):
        assert experiments.config_key(resolve_config("cifar10", 1.0, "quick", {"seed": 0, **hashed})) != base


@pytest.mark.realdata
@pytest.mark.slow
def test_second_call_returns_from_the_cache_and_a_changed_key_runs_anew(tmp_path, cifar10_root, monkeypatch):
    import podd_lib.run as method

    s = kit.setup("test_cache", "smoke", out_dir=str(tmp_path), data_root=str(cifar10_root))
    first = s.distill(1.0)[0]
    run_dir = Path(first["run_dir"])
    assert run_dir.parent == tmp_path / "smoke" / "runs" / "cifar10"
    assert run_dir.name == "ipc1-156e2e1e7881" and (run_dir / "result.json").is_file()

    def recompute(*args, **kwargs):
        raise AssertionError("distilled again")

    monkeypatch.setattr(method, "distill", recompute)
    assert s.distill(1.0)[0] == first  # from the cache
    assert s.distill(1.0, {"checkpoint_every": 5})[0] == first  # not hashed: the same run
    with pytest.raises(AssertionError, match="distilled again"):
        s.distill(1.0, {"steps": 1})  # hashed: a new run
    with pytest.raises(AssertionError, match="distilled again"):
        kit.setup("test_cache", "smoke", out_dir=str(tmp_path), data_root=str(cifar10_root), force=True).distill(1.0)
    monkeypatch.undo()
    second = s.distill(1.0, {"steps": 1})[0]
    assert Path(second["run_dir"]) != run_dir and second["steps"] == 1 and first["steps"] == 2


# ----------------------------------------------------------------------------- the session


def test_setup_places_smoke_results_apart_and_checks_its_input(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PODD_NUM_THREADS", "1")
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    s = kit.setup("nb", "smoke", out_dir=str(tmp_path), data_root="somewhere", seeds=["3"])
    assert s.out_dir == str(tmp_path / "smoke") and s.seeds == [3] and s.dataset == "cifar10" and s.threads == 1
    assert s.data_root == "somewhere" and os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    assert "profile=smoke" in capsys.readouterr().out
    q = kit.setup("nb", "quick", out_dir=str(tmp_path), datasets=["cifar100", "cifar10"], dataset="cifar10")
    assert q.out_dir == str(tmp_path) and q.datasets == ["cifar100", "cifar10"] and q.dataset == "cifar10"
    assert Path(q.data_root).name == "data"
    for bad in ({"profile": "fast"}, {"seeds": ["x"]}, {"datasets": "cifar10"}, {"datasets": ["mnist9"]},
                {"device": "gpu"}):
        with pytest.raises(PoddError):
            kit.setup(**{"name": "nb", "profile": "smoke", **bad})
    monkeypatch.setenv("PODD_NUM_THREADS", "two")
    with pytest.raises(PoddError, match="PODD_NUM_THREADS"):
        kit.setup("nb", "smoke")


def test_deviations_are_printed_and_noted(capsys, monkeypatch):
    monkeypatch.setenv("PODD_NUM_THREADS", "1")
    s = kit.setup("nb", "smoke")
    capsys.readouterr()
    s.show_deviations(1.0)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("cifar10, profile 'smoke': ") and "width = 8 (paper: 128)" in [x.strip() for x in out]
    note = s.deviation_notes(1.0)
    assert len(note) == 1 and note[0].startswith("profile smoke deviates from the paper: ") and "width = 8" in note[0]
    assert "(dm)" in s.deviation_notes(1.0, {"algorithm": "dm"}, label="dm")[0]
    assert kit.setup("nb", "paper-text").deviation_notes(1.0) == []
    capsys.readouterr()
    kit.setup("nb", "paper-text").show_deviations(1.0)
    assert "cifar10, profile 'paper-text': the paper's settings" in capsys.readouterr().out
    # the paper profile runs as the authors' release: the notebooks show which behaviour is in force
    kit.setup("nb", "paper").show_deviations(1.0)
    out = [x.strip() for x in capsys.readouterr().out.splitlines()]
    assert "cifar10, profile 'paper': 6 changes" in out and "init = 'class_areas' (paper: 'normal')" in out
    assert "clip_order = 'release' (default: 'text')" in out
    note = kit.setup("nb", "paper").deviation_notes(1.0)
    assert len(note) == 1 and "curriculum_draw = 'epoch'" in note[0] and "real_batches = 'epochs'" in note[0]


def test_setup_finds_the_kit_root_from_notebooks(tmp_path):
    from podd_lib.kit.session import notebook_root

    assert notebook_root(tmp_path / "notebooks") == tmp_path
    assert notebook_root(tmp_path) == tmp_path


# ----------------------------------------------------------------------------- the plans


def test_plans_shrink_under_smoke_only(monkeypatch):
    monkeypatch.setenv("PODD_NUM_THREADS", "1")
    assert studies.figure6_grids("smoke") == [[5, 2], [16, 6]]
    assert studies.figure6_grids("quick") == [[5, 2], [10, 4], [16, 6]] and len(studies.figure6_grids("paper")) == 7 and studies.figure6_grids("smoke", [[8, 3]]) == [[8, 3]]
    # the notebook's parameter is None by default (the profile's run list); a given number wins
    assert studies.class_orders("smoke") == ["paper", "random:1", "random:2"] and len(studies.class_orders("quick")) == 3
    assert len(studies.class_orders("paper")) == 6
    assert studies.class_orders("smoke", 5)[-1] == "random:5"
    assert studies.class_orders("quick", 3) == ["paper", "random:1", "random:2", "random:3"]
    plan = studies.algorithm_plan(["ratbptt", "mtt"], ["tiling", "poster"], ["random", "dream"])
    assert len(plan) == 6 and ("mtt", "tiling", "dream") not in plan
    assert studies.table1_ipcs(kit.setup("nb", "smoke")) == {"cifar10": [1.0, 0.5]}
    quick = studies.table1_ipcs(kit.setup("nb", "quick"))["cifar10"]
    assert quick == [1.0, 0.5, 0.3]
    paper = studies.table1_ipcs(kit.setup("nb", "paper"))["cifar10"]
    assert paper == sorted(paper, reverse=True) and paper[0] == 1.0 and paper[-1] == 0.3 and len(paper) == 8


def test_an_architecture_evaluation_is_cached_beside_its_set(tmp_path, monkeypatch):
    import podd_lib.evaluate as evaluate
    from podd_lib.kit.plan import PlanSession
    from tests.helpers import fake_real

    monkeypatch.setattr(experiments, "load_real", lambda cfg, data_root=None: fake_real())
    over = {"seed": 1, "steps": 1}
    a = experiments.cross_arch_run("distill", "cifar10", 0.5, "smoke", "alexnet", 1, [2], tmp_path, over, device="cpu")
    assert a["seed"] == 1 and json_of(Path(a["run_dir"]) / "result.json")["seed"] == 1  # its claim pairs by seed
    folder = experiments.distill_dir(resolve_config("cifar10", 0.5, "smoke", over), tmp_path) / "arch" / "alexnet-1x2"
    assert a["run_dir"] == str(folder) and (folder / "result.json").exists()
    assert a["eval"]["protocol"]["arch"] == "alexnet" and a["eval"]["protocol"]["num_models"] == 1
    assert a["summary"]["soft"]["step"] == 2 and a["eval"]["hard"] is None
    r = experiments.cross_arch_run("random", "cifar10", 0.5, "smoke", "vgg11", 1, [1], tmp_path, {"seed": 0})
    assert r["eval"]["protocol"]["n_syn"] == 5 and r["eval"]["protocol"]["arch"] == "vgg11"

    def boom(*args, **kwargs):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(evaluate, "evaluate_distilled", boom)
    assert experiments.cross_arch_run("distill", "cifar10", 0.5, "smoke", "alexnet", 1, [2], tmp_path, over) == a
    own = experiments.cross_arch_run("distill", "cifar10", 0.5, "smoke", "convnet", 2, [5], tmp_path, over)
    assert own["reused"] and own["summary"] == json_of(folder.parent.parent / "result.json")["summary"]
    s = PlanSession("t", "smoke", str(tmp_path), "", "cpu", False, ["cifar10"], [1], "cifar10", 1, notebook="t", root="")
    s.cross_arch("distill", 0.5, "alexnet", 1, [2], {"steps": 1})
    spec = s.runs[-1]
    assert spec["kind"] == "arch" and spec["folder"] == str(folder) and spec["cached"]
    with pytest.raises(PoddError, match="unknown architecture"):
        experiments.cross_arch_run("distill", "cifar10", 0.5, "smoke", "lenet", 1, [2], tmp_path, over)


def json_of(path):
    """A JSON file's content."""
    import json

    return json.loads(Path(path).read_text())


def test_an_executor_computes_a_planned_architecture_evaluation_as_the_notebook_does(tmp_path, monkeypatch):
    from podd_lib.kit import jobs
    from podd_lib.kit.plan import PlanSession

    s = PlanSession("t", "smoke", "../outputs", "", "cpu", False, ["cifar10"], [0], "cifar10", 1, notebook="t",
                    root=str(tmp_path))
    s.cross_arch("random", 0.5, "resnet18", 1, [3])
    spec = {**s.runs[-1], "out_dir": "../outputs"}
    calls = []
    monkeypatch.setattr(experiments, "cross_arch_run", lambda *a, **kw: calls.append((a, kw)) or {})
    monkeypatch.chdir(tmp_path)
    jobs.compute_run(spec, str(tmp_path), None, "cpu", report=lambda *a: None)
    (args, kw), = calls
    assert args == ("random", "cifar10", 0.5, "smoke", "resnet18", 1, [3], "../outputs", {"seed": 0})
    assert kw["tag"] == "random"
