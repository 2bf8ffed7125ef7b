"""What a result records about how it was computed, and which seeds a profile's claims pair."""

import json

import pytest

from podd_lib.config import CLAIM_SEEDS, profile_seeds
from podd_lib.determinism import environment
from podd_lib.errors import PoddError
from podd_lib.kit import report, tables
from podd_lib.kit.experiments import computed_on


def test_environment_names_commit_versions_threads_and_cpu():
    import numpy
    import torch

    env = environment("cpu")
    assert env["torch"] == torch.__version__ and env["numpy"] == numpy.__version__
    assert env["threads"] == torch.get_num_threads() and env["cpu"]
    assert env["kit_commit"] == "unknown" or len(env["kit_commit"].split("+")[0]) == 40
    assert {"host", "device", "kit_commit", "threads", "cpu", "torch"} <= set(computed_on("cpu"))


def test_results_file_keeps_each_distinct_computation_once(tmp_path):
    a = {"host": "h", "threads": 2, "torch": "2.14.1"}
    b = {**a, "threads": 1}
    path = report.save_results(tmp_path, "03_x", [{"method": "m", "ours_mean": 1.0}], "quick",
                               computed_with=[a, None, b, dict(a)])
    data = json.loads(path.read_text())
    assert data["computed_with"] == [a, b]
    assert data["rendered_with"]["torch"] == environment()["torch"]


def test_profile_seeds():
    assert profile_seeds("quick") == list(CLAIM_SEEDS) and len(CLAIM_SEEDS) >= 3
    assert profile_seeds("smoke") == [0, 1]  # configs/runs.toml
    assert profile_seeds("quick", [4]) == [4]
    for bad in ([], [0, 0], [-1], ["x"]):
        with pytest.raises(PoddError, match="seeds"):
            profile_seeds("quick", bad)


def result(seed, accs, algo="dm", rep="poster"):
    """A distill_and_evaluate-shaped result of one seed with per-network final accuracies."""
    mean = sum(accs) / len(accs)
    return {"seed": seed, "algorithm": algo, "representation": rep, "sampling": "random", "profile": "quick",
            "command": f"run {seed}", "eval": {"soft": {"by_step": [{"step": 10, "acc_pct": accs}]}},
            "summary": {"soft": {"mean": mean, "std": 0.0, "step": 10}}}


def test_accuracy_keeps_each_seeds_mean_and_algorithms_pool_seeds():
    runs = [result(0, [20.0, 22.0]), result(1, [30.0, 30.0]), result(2, [25.0, 25.0], rep="tiling")]
    acc = tables.accuracy(runs[:2])
    assert acc["by_seed"] == {0: 21.0, 1: 30.0} and acc["runs"] == 2
    assert tables.accuracy({"config": {"seed": 7}, **{k: v for k, v in runs[0].items() if k != "seed"}})["by_seed"] == {7: 21.0}
    df = tables.algorithms_frame(runs)
    assert len(df) == 2
    poster = df[df["synthetic set"] == "poster"].iloc[0]
    assert poster["seed_means"] == {"0": 21.0, "1": 30.0} and poster["command"] == "run 0 ; run 1"


def test_kit_commit_is_dirty_for_changed_code_but_not_for_the_kits_own_results(tmp_path):
    import subprocess

    from podd_lib.determinism import RESULT_PATHS, kit_commit

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "outputs").mkdir()
    (tmp_path / "benchmarks").mkdir()
    files = {"code.py": "x = 1\n", "outputs/r.json": "{}\n", "benchmarks/probes.jsonl": ""}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    assert "outputs" in RESULT_PATHS and "benchmarks/probes.jsonl" in RESULT_PATHS
    head = kit_commit(tmp_path)
    assert len(head) == 40
    (tmp_path / "outputs/r.json").write_text('{"acc": 1}\n')
    (tmp_path / "benchmarks/probes.jsonl").write_text('{"seed": 1}\n')
    (tmp_path / "untracked.py").write_text("")
    assert kit_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert kit_commit(tmp_path) == head + "+dirty"
    assert kit_commit(tmp_path / "not-a-repo") == "unknown"
