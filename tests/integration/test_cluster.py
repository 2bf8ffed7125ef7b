"""The plan of run_all.sh, its executors (in-process and submitit's LocalExecutor), resuming, failures.

The real-data tests run a few smoke runs through submitit's local executor, each in its own
process, in a scratch copy of the notebooks folder (so outputs go to the scratch folder).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from podd_lib.errors import PoddError
from podd_lib.kit import jobs, plan

REPO = Path(__file__).resolve().parents[2]


def _scratch(tmp_path: Path) -> Path:
    """A copy of notebooks/ under tmp_path (its ../outputs is tmp_path/outputs)."""
    nb = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", nb)
    return nb


# ----------------------------------------------------------------------------- plan (no data)


def test_plan_smoke_lists_each_run_once_with_its_notebooks():
    p = plan.build_plan("smoke", notebooks_dir=REPO / "notebooks", out_dir="../nonexistent-outputs")
    folders = [r["folder"] for r in p["runs"]]
    assert len(folders) == len(set(folders)) == 65  # two seeds (runs.toml) for every run a claim compares
    assert sum(r["tag"] == "full" for r in p["runs"]) == 1  # the full-data baseline, which no claim compares: once
    assert not any(r["cached"] for r in p["runs"])
    by_nb = {n["name"]: n["runs"] for n in p["notebooks"]}
    assert len(by_nb["07_algorithms_under_posters"]) == 28 and by_nb["01_poco_class_ordering"] == []
    # the 1-IPC poster and tiling at both seeds, the 0.5-IPC poster and random images at the first: 6 sets x 4 architectures
    assert len(by_nb["09_cross_architecture"]) == 30
    shared = next(r for r in p["runs"] if r["tag"] == "quickstart")
    assert shared["notebooks"][:3] == ["00_quickstart", "02_table1_less_than_one_ipc", "03_table2_one_ipc"]
    assert all(r["estimate_s"] > 0 for r in p["runs"]) and p["estimate_s"] == pytest.approx(
        sum(r["estimate_s"] for r in p["runs"]))
    assert any("default" in b for b in p["basis"])


def test_plan_paper_uses_the_measured_cpu_step_and_can_take_a_given_rate():
    p = plan.build_plan("paper", only="02", notebooks_dir=REPO / "notebooks", out_dir="../nonexistent-outputs")
    podd = [r for r in p["runs"] if r["kind"] == "distill"]
    assert {r["steps"] for r in podd} == {40000}
    assert "59.4" in p["basis"][0]
    fast = plan.build_plan("paper", only="02", notebooks_dir=REPO / "notebooks", out_dir="../nonexistent-outputs",
                           seconds_per_step=1.0)
    assert fast["estimate_s"] < p["estimate_s"] and "command line" in fast["basis"][0]


def test_only_that_matches_nothing_is_an_error():
    names = plan.notebook_names(REPO / "notebooks")
    assert plan.select_notebooks(names, "02,03_table2_one_ipc") == ["02_table1_less_than_one_ipc", "03_table2_one_ipc"]
    with pytest.raises(PoddError, match="42_nothing"):
        plan.select_notebooks(names, "42_nothing")
    with pytest.raises(PoddError, match="77"):
        plan.select_notebooks(names, "02,77")


def test_runner_bad_input_is_one_line_and_exit_2(tmp_path):
    for args in (["--only", "42_nothing"], ["--jobs", "0"], ["--executor", "slurm", "--slurm-config", str(tmp_path / "no.toml")]):
        r = subprocess.run([sys.executable, "-m", "podd_lib.kit.runner", "--profile", "smoke", "--plan", *args],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


def test_slurm_settings_from_the_example_file_and_flags():
    s = jobs.load_slurm_settings(REPO / "slurm.example.toml", {"partition": "a100", "time_min": None})
    assert s["partition"] == "a100" and s["gpus_per_run"] == 1 and s["sbatch"]["account"] == "my_lab"
    with pytest.raises(PoddError, match="unknown"):
        jobs.load_slurm_settings(None, {"gpu": 2})
    with pytest.raises(PoddError, match="gpus_per_run"):
        jobs.load_slurm_settings(None, {"gpus_per_run": "two"})


def test_run_job_checkpoint_resubmits_the_same_run_without_force():
    job = jobs.RunJob()
    sub = job.checkpoint({"folder": "f"}, "nb", None, "cpu", True)
    assert sub.function is job and sub.args == ({"folder": "f"}, "nb", None, "cpu", False)


def test_progress_line_counts_steps_and_estimates_what_is_left():
    run = {"algorithm": "ratbptt", "steps": 100, "eval_models": 2, "eval_steps": 10, "eval_phases": 2}
    rates = {"step": {}, "step_default": 1.0, "model_step": 0.5}
    text = jobs.progress_text(run, {"distill": [50, 100]}, 50.0, rates)
    assert text.startswith("distill 50/100 |") and "~70 s left" in text


class _InstantExecutor:
    """An executor whose jobs finish at their first poll; it records which runs were in flight together."""

    def __init__(self) -> None:
        self.rounds: list[list[str]] = []

    def batch(self):
        import contextlib

        self.rounds.append([])
        return contextlib.nullcontext()

    def submit(self, job, run, *args):
        from types import SimpleNamespace

        self.rounds[-1].append(run["folder"])
        return SimpleNamespace(done=lambda: True, result=lambda: None, paths=SimpleNamespace(stderr="log"),
                               job_id=run["folder"])


def test_an_evaluation_on_another_architecture_waits_for_its_set(tmp_path):
    runs = plan.build_plan("smoke", only="09", notebooks_dir=REPO / "notebooks", out_dir="../nonexistent-outputs")["runs"]
    runs = [{**r, "cached": False} for r in runs]
    ex = _InstantExecutor()
    jobs._execute_submitit(jobs.Board(runs, tmp_path, plan.rates_for(tmp_path, "smoke"), io.StringIO()), ex, runs,
                           str(tmp_path), None, "cpu", False, jobs=len(runs), poll_s=0)
    when = {folder: k for k, batch in enumerate(ex.rounds) for folder in batch}
    evals = [r for r in runs if r["kind"] == "arch"]
    assert evals and sorted(when) == sorted(r["folder"] for r in runs)  # every run once
    # all jobs may run at once, yet each evaluation starts after the set it evaluates (<set>/arch/<name>)
    assert all(when[r["folder"]] > when[str(Path(r["folder"]).parent.parent)] for r in evals)
    assert jobs.waits_for(evals[0], [str(Path(evals[0]["folder"]).parent.parent)])


def test_an_interrupted_evaluation_continues_with_the_same_result(tmp_path):
    from podd_lib.evaluate import EvalProtocol, train_and_test

    g = torch.Generator().manual_seed(0)
    x, xt = torch.randn(20, 3, 8, 8, generator=g), torch.randn(30, 3, 8, 8, generator=g)
    y, yt = torch.softmax(torch.randn(20, 4, generator=g), -1), torch.randint(0, 4, (30,), generator=g)
    kw = dict(protocol=EvalProtocol(num_models=2, steps=(10, 20), bs_d=8, width=4, depth=1), progress=False)
    straight = train_and_test(x, y, xt, yt, **kw)

    def stop(step: int, total: int) -> None:
        if step == 13:
            raise KeyboardInterrupt

    state = tmp_path / "soft.pt"
    with pytest.raises(KeyboardInterrupt):
        train_and_test(x, y, xt, yt, state_path=state, on_step=stop, **kw)
    assert torch.load(state, weights_only=False)["step"] == 12
    resumed = train_and_test(x, y, xt, yt, state_path=state, **kw)
    assert resumed["by_step"] == straight["by_step"]


# ----------------------------------------------------------------------------- executors (real data)


def _runs(nb: Path, only: str) -> dict:
    return plan.build_plan("smoke", only=only, notebooks_dir=nb)


@pytest.mark.realdata
def test_submitit_runs_equal_in_process_runs(tmp_path, cifar10_root):
    summaries = {}
    for executor in ("local", "submitit-local"):
        nb = _scratch(tmp_path / executor)
        p = _runs(nb, "03")
        p["runs"] = [r for r in p["runs"] if r["kind"] in ("random", "full") or r["tag"] == "ratbptt"]
        board = jobs.execute(p, executor, 2, nb, str(cifar10_root), "cpu", stream=io.StringIO(), poll_s=0.5)
        assert not board.failures and set(board.state.values()) == {"done"}
        summaries[executor] = {Path(r["folder"]).name: json.loads((nb / r["result"]).read_text())
                               for r in p["runs"]}
    local, sub = summaries["local"], summaries["submitit-local"]
    assert local.keys() == sub.keys() and len(local) == 5  # two seeds of the tiling and random images, one full set
    for k in local:
        assert json.dumps(local[k]["eval"].get("soft", local[k]["eval"]).get("by_step")) == \
            json.dumps(sub[k]["eval"].get("soft", sub[k]["eval"]).get("by_step")), k
        assert sub[k]["computed_on"]["host"] and sub[k]["computed_on"]["device"] == "cpu"


@pytest.mark.realdata
def test_a_preempted_submitit_job_requeues_and_resumes_to_the_same_poster(tmp_path, cifar10_root):
    import submitit

    nb = _scratch(tmp_path)
    s = plan.PlanSession("t", "smoke", "../outputs/smoke", "", "cpu", False, ["cifar10"], [0], "cifar10", 1,
                         notebook="t", root=str(nb))
    run = {**s._distill_spec("cifar10", 1.0, {"steps": 40, "seed": 0}, "podd"), "out_dir": "../outputs/smoke"}
    folder = nb / run["folder"]
    ex = submitit.LocalExecutor(folder=str(tmp_path / "jobs"))
    ex.update_parameters(timeout_min=30)
    job = ex.submit(jobs.RunJob(), run, str(nb), str(cifar10_root), "cpu", False)
    deadline = time.time() + 600
    while time.time() < deadline and not (folder / "checkpoint.pt").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    assert not (folder / "result.json").exists(), "the job ended before it could be preempted"
    from submitit.local.local import LocalJobEnvironment

    pid = json.loads((folder / "progress.json").read_text())["pid"]  # the worker process, as SLURM signals it
    os.kill(pid, LocalJobEnvironment._usr_sig())  # preemption: submitit calls RunJob.checkpoint and requeues
    job.result()
    log = Path(job.paths.stderr).read_text() + Path(job.paths.stdout).read_text()
    assert "Requeued" in log or "checkpoint" in log.lower(), log[-2000:]
    resumed = torch.load(folder / "poster.pt", weights_only=False)

    straight_nb = _scratch(tmp_path / "straight")
    jobs.compute_run(run, str(straight_nb), str(cifar10_root), "cpu")
    os.chdir(REPO)
    straight = torch.load(straight_nb / run["folder"] / "poster.pt", weights_only=False)
    torch.testing.assert_close(resumed["poster"], straight["poster"], rtol=1e-4, atol=1e-5)
    assert json.loads((folder / "result.json").read_text())["steps"] == 40


@pytest.mark.realdata
def test_a_failing_job_surfaces_with_its_log_and_the_others_finish(tmp_path, cifar10_root):
    nb = _scratch(tmp_path)
    p = _runs(nb, "03")
    bad = {**next(r for r in p["runs"] if r["kind"] == "random")}
    p["runs"] = [r for r in p["runs"] if r["kind"] == "full"][:1] + [  # one good job (seed 0) beside the bad one
        {**bad, "folder": bad["folder"] + "-bad", "kind": "nonsense"}]
    out = io.StringIO()
    board = jobs.execute(p, "submitit-local", 2, nb, str(cifar10_root), "cpu", stream=out, poll_s=0.5)
    assert list(board.state.values()).count("done") == 1 and list(board.state.values()).count("failed") == 1
    (folder, why), = board.failures.items()
    info = json.loads((nb / folder / "job.json").read_text())
    assert info["state"] == "failed" and Path(info["log"]).exists() and "nonsense" in Path(info["log"]).read_text()
    assert "unknown run kind" in info["error"] and "FAILED" in out.getvalue()
    assert "FAILED" in board.summary() and info["log"] in board.summary()


def test_render_only_returns_a_missing_row_that_names_the_failed_job(tmp_path, monkeypatch):
    from podd_lib.kit import experiments, tables

    monkeypatch.setenv(experiments.RENDER_ONLY, "1")
    cfg = experiments.resolve_config("cifar10", 0.5, "smoke", {"seed": 0})
    folder = experiments.distill_dir(cfg, tmp_path, "cifar10")
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({"state": "failed", "error": "RuntimeError: boom", "log": "x.err"}))
    r = experiments.distill_and_evaluate("cifar10", 0.5, "smoke", tmp_path, {"seed": 0}, data_root=str(tmp_path / "none"))
    assert r["missing"] and "boom" in r["command"] and "x.err" in r["command"]
    assert tables.fmt_acc(r) == tables.fmt_pm(None)
    assert not (folder / "result.json").exists() and not (tmp_path / "none").exists()


@pytest.mark.slurm
@pytest.mark.realdata
def test_slurm_executor_end_to_end_with_a_forced_preemption(tmp_path, cifar10_root):
    """Submit two smoke runs to SLURM, preempt one mid-run (USR2, as on preemption), collect both."""
    if os.environ.get("PODD_SLURM_TEST") != "1" or shutil.which("sbatch") is None:
        pytest.skip("set PODD_SLURM_TEST=1 with a running SLURM cluster (docs/slurm.md: single-node cluster)")
    nb = tmp_path / "notebooks"  # on a path every node sees (tmp_path on a single-node cluster)
    shutil.copytree(REPO / "notebooks", nb)
    s = plan.PlanSession("t", "smoke", "../outputs/smoke", "", "cpu", False, ["cifar10"], [0], "cifar10", 1,
                         notebook="t", root=str(nb))
    runs = [s._distill_spec("cifar10", 1.0, {"steps": 60, "seed": 0}, "podd"),
            s._distill_spec("cifar10", 0.5, {"seed": 0}, "podd")]
    p = {"profile": "smoke", "out_dir": "../outputs/smoke", "runs": [{**r, "eval_phases": 2} for r in runs]}
    settings = jobs.load_slurm_settings(None, {"gpus_per_run": 0, "cpus_per_run": 1, "time_min": 20,
                                               "partition": os.environ.get("PODD_SLURM_PARTITION")})
    folder = nb / runs[0]["folder"]

    def preempt() -> None:
        deadline = time.time() + 600
        while time.time() < deadline and not (folder / "checkpoint.pt").exists():
            time.sleep(0.5)
        job_id = json.loads((folder / "progress.json").read_text()).get("slurm_job")
        ids = subprocess.run(["squeue", "-h", "-o", "%i", "-n", "podd"], capture_output=True, text=True).stdout.split()
        subprocess.run(["scancel", "--signal=USR2", job_id or ids[0]], check=True)

    import threading

    t = threading.Thread(target=preempt)
    t.start()
    board = jobs.execute(p, "slurm", 2, nb, str(cifar10_root), "cpu", slurm=settings, stream=io.StringIO(), poll_s=2)
    t.join()
    assert not board.failures and set(board.state.values()) == {"done"}
    assert json.loads((folder / "result.json").read_text())["steps"] == 60
    assert json.loads((folder / "result.json").read_text())["computed_on"].get("slurm_job")
    log = Path(json.loads((folder / "job.json").read_text())["log"]).read_text()
    assert "preempted" in log and "REQUEUE" in log, log[-2000:]


def test_compare_results_tells_tables_apart_but_not_timings(tmp_path):
    def write(d: Path, acc: float, sps: float) -> Path:
        d.mkdir()
        (d / "07_x.json").write_text(json.dumps({"rows": [{"ours": acc, "s / step": sps}], "columns": ["ours"]}))
        return d

    a, b, c = write(tmp_path / "a", 20.5, 0.3), write(tmp_path / "b", 20.5, 0.9), write(tmp_path / "c", 20.6, 0.3)
    cmd = [sys.executable, str(REPO / "scripts" / "compare_results.py")]
    assert subprocess.run([*cmd, str(a), str(b)], capture_output=True).returncode == 0
    assert subprocess.run([*cmd, str(a), str(c)], capture_output=True).returncode == 1


def test_notebook_07_leaves_the_init_to_the_profile():
    """Under `paper` every algorithm starts as the profile says (the release's class areas); no run forces an init."""
    runs = plan.build_plan("paper", only="07", notebooks_dir=REPO / "notebooks", out_dir="../x")["runs"]
    assert len(runs) == 42 and all("--set" in r["command"] for r in runs)
    assert not any("init=" in r["command"] for r in runs)
