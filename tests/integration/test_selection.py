"""keep = "best_train" (the release's poster selection): what it keeps, and that it leaves the distillation alone."""

import csv

import torch

import podd_lib.selection as selection
from podd_lib.config import resolve_config
from podd_lib.run import distill, load_run
from tests.helpers import ORDER, fake_real, tiny_cfg


def rows(run) -> list[dict]:
    """metrics.csv of a run folder."""
    return list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))


def test_the_kept_poster_is_the_best_scored_one_and_resume_keeps_it(tmp_path, monkeypatch):
    by_step = {2: 10.0, 4: 30.0, 6: 30.0}  # a tie later does not replace the kept poster

    def score(cfg, x, y, real, device="cpu"):
        step = len(rows_seen) * 2 + 2
        rows_seen.append(step)
        return {"score": by_step[step], "by_step": [{"step": 5, "train_acc_pct": by_step[step]}]}

    rows_seen: list[int] = []
    monkeypatch.setattr(selection, "training_set_score", score)
    cfg = tiny_cfg(steps=6, keep="best_train", keep_every=2)
    distill(cfg, fake_real(), ORDER, tmp_path / "kept", progress=False)
    at4 = distill(tiny_cfg(steps=4), fake_real(), ORDER, tmp_path / "at4", progress=False)
    run = load_run(tmp_path / "kept")
    assert run["kept"]["step"] == 4 and run["kept"]["score"] == 30.0
    assert torch.equal(run["poster"], at4.poster) and torch.equal(run["Y"], at4.Y)
    assert [r["kept"] for r in rows(tmp_path / "kept") if r["kept"]] == ["True", "True", "False"]

    rows_seen.clear()
    distill(cfg, fake_real(), ORDER, tmp_path / "resumed", progress=False, stop_after=3)
    distill(cfg, fake_real(), ORDER, tmp_path / "resumed", resume=True, progress=False)
    assert torch.equal(load_run(tmp_path / "resumed")["poster"], run["poster"])


def test_scoring_on_the_training_set_does_not_change_the_distillation(tmp_path):
    real = fake_real()
    last = distill(tiny_cfg(steps=4), real, ORDER, tmp_path / "last", progress=False)
    best = distill(tiny_cfg(steps=4, keep="best_train", keep_every=2), real, ORDER, tmp_path / "best", progress=False)
    assert torch.equal(last.poster, best.poster) and torch.equal(last.Y, best.Y)  # the final states agree bitwise
    scores = [float(r["train_acc"]) for r in rows(tmp_path / "best") if r["train_acc"]]
    kept = load_run(tmp_path / "best")["kept"]
    assert len(scores) == 2 and kept["score"] == max(scores) and kept["step"] == 2 * (scores.index(max(scores)) + 1)
    assert load_run(tmp_path / "last")["kept"] is None


def test_keep_is_the_release_s_under_paper_and_hashes_only_when_on():
    from podd_lib.kit.experiments import config_key

    assert resolve_config("cifar10", 1.0, "paper").keep == "best_train"
    assert resolve_config("cifar10", 1.0, "paper-text").keep == resolve_config("cifar10", 1.0, "quick").keep == "last"
    quick = config_key(resolve_config("cifar10", 1.0, "quick"))
    assert config_key(resolve_config("cifar10", 1.0, "quick", {"keep_every": 7})) == quick  # unused while keep = last
    assert config_key(resolve_config("cifar10", 1.0, "quick", {"keep": "best_train"})) != quick
