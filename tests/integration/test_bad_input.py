"""Bad input through the real `podd` command: one line, non-zero exit, fast, and no file touched.

Every case runs `python -m podd_lib ...` in a subprocess inside one fixture tree (a tiny
ImageFolder, a finished smoke run, damaged copies of it, a user's folder and a user's file) and
checks: exit status non-zero, exactly one line on stderr and no traceback, the command failed
within FAIL_WITHIN seconds, and every file and folder of the tree is byte-for-byte as before
(nothing new appears either, e.g. no empty data folder). Durations are printed by
test_durations_recorded at the end (run pytest with -s to see them).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import make_imagefolder

RUN_FLAGS = ["--set", "bs=8", "--no-zca"]  # the fixture run: small and quick
FAIL_WITHIN = 10.0  # seconds on an idle machine; scaled up by the reference command's time on a busy one
DURATIONS: dict[str, float] = {}
MESSAGES: dict[str, str] = {}


def podd(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 120) -> tuple[int, str, str, float]:
    """Run the real CLI; (exit status, stdout, stderr, seconds)."""
    full_env = {**os.environ, "CI": "1", "PODD_DATA_ROOT": str(cwd / "emptyroot"), **(env or {})}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "podd_lib", *args], cwd=cwd, env=full_env, capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root -> sha256 of its bytes ('dir' for folders) and its mode."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath) / d
            out[str(p.relative_to(root))] = "dir"
        for f in filenames:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """The fixture tree every case runs in (cwd): data, a finished run, damaged runs, user files."""
    root = tmp_path_factory.mktemp("badinput")
    make_imagefolder(root / "toy")
    make_imagefolder(root / "oneclass", n_classes=1)
    make_imagefolder(root / "emptyclass", n_classes=3, empty_train=("class1",))
    (root / "emptyroot").mkdir()
    base = ["--dataset", f"imagefolder:{root / 'toy'}", "--profile", "smoke", "--order", "identity",
            "--data-root", str(root), "--no-download", "--device", "cpu", *RUN_FLAGS]
    code, _, err, _ = podd(["distill", *base, "--out", "run"], root, timeout=600)
    assert code == 0, err
    for name, damage in (("trunc_poster", ("poster.pt", "truncate")), ("empty_labels", ("labels.pt", "empty")),
                         ("broken_config", ("config.json", "broken")), ("broken_ck", ("checkpoint.pt", "truncate"))):
        shutil.copytree(root / "run", root / name)
        path = root / name / damage[0]
        data = path.read_bytes()
        path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "broken": data[:-20]}[damage[1]])
    user = root / "userdir"
    user.mkdir()
    (user / "notes.txt").write_text("my notes\n")
    (user / "config.json").write_text('{"mine": true}\n')
    (user / "metrics.csv").write_text("a,b\n1,2\n")
    (root / "afile.txt").write_text("a user's file\n")
    (root / "user.pt").write_bytes(b"not a tensor file")
    (root / "bad.toml").write_text("width = \n[[[\n")
    (root / "good.toml").write_text("width = 8\n")
    measure_reference(root)
    return root


REFERENCE = "reference: podd info (imports torch, reads no data)"


def measure_reference(root: Path) -> None:
    """Time a command that imports torch and reads no data; keep the slowest time seen."""
    code, _, err, seconds = podd(["info", "--dataset", "cifar10", "--ipc", "1"], root)
    assert code == 0, err
    DURATIONS[REFERENCE] = max(seconds, DURATIONS.get(REFERENCE, 0.0))


def fail_within() -> float:
    """FAIL_WITHIN, or 2.5x the reference command (which reads no data) when the machine is busy."""
    return max(FAIL_WITHIN, 2.5 * DURATIONS.get(REFERENCE, 0.0))


def base(tree: Path, dataset: str = "toy") -> list[str]:
    """Common distill flags on a fixture ImageFolder."""
    return ["--dataset", f"imagefolder:{tree / dataset}", "--profile", "smoke", "--order", "identity",
            "--data-root", str(tree), "--no-download", "--device", "cpu"]


# (case id, argv builder, text the one-line message must contain)
D = "distill"
CASES = [
    # zero, negative and malformed counts
    ("steps_zero", lambda t: [D, *base(t), "--steps", "0", "--out", "new"], "integer >= 1"),
    ("steps_negative", lambda t: [D, *base(t), "--steps", "-1", "--out", "new"], "integer >= 1"),
    ("set_steps_zero", lambda t: [D, *base(t), "--set", "steps=0", "--out", "new"], "steps must be an integer >= 1"),
    ("set_steps_ten", lambda t: [D, *base(t), "--set", "steps=ten", "--out", "new"], "steps must be an integer"),
    ("set_width_abc", lambda t: [D, *base(t), "--set", "width=abc", "--out", "new"], "width must be an integer"),
    ("set_width_float", lambda t: [D, *base(t), "--set", "width=3.5", "--out", "new"], "width must be an integer"),
    ("set_width_zero", lambda t: [D, *base(t), "--set", "width=0", "--out", "new"], "width must be an integer >= 1"),
    ("set_class_grid_unclosed", lambda t: [D, *base(t), "--set", "class_grid=[5,2", "--out", "new"], "class_grid"),
    ("set_class_grid_length", lambda t: [D, *base(t), "--set", "class_grid=[4]", "--out", "new"], "class_grid must be"),
    ("set_lr_negative", lambda t: [D, *base(t), "--set", "lr=-1", "--out", "new"], "lr must be a positive number"),
    ("set_inner_lr_zero", lambda t: [D, *base(t), "--set", "inner_lr=0", "--out", "new"], "inner_lr must be a positive"),
    ("set_zca_maybe", lambda t: [D, *base(t), "--set", "zca=maybe", "--out", "new"], "zca must be true or false"),
    ("set_eval_steps_zero", lambda t: [D, *base(t), "--set", "eval_steps=[0]", "--out", "new"], "eval_steps must be"),
    ("set_unknown_key", lambda t: [D, *base(t), "--set", "nosuchkey=1", "--out", "new"], "unknown config key"),
    ("set_no_equals", lambda t: [D, *base(t), "--set", "width", "--out", "new"], "key=value"),
    ("set_arch_unknown", lambda t: [D, *base(t), "--set", "arch=nosuchnet", "--out", "new"], "arch must be one of"),
    ("set_batch_zero", lambda t: [D, *base(t), "--set", "bs_d=0", "--out", "new"], "bs_d must be an integer >= 1"),
    ("ipc_zero", lambda t: [D, *base(t), "--ipc", "0", "--out", "new"], "IPC must be a positive number"),
    ("ipc_abc", lambda t: [D, *base(t), "--ipc", "abc", "--out", "new"], "invalid float value"),
    ("set_algorithm_unknown", lambda t: [D, *base(t), "--set", "algorithm=mmt", "--out", "new"], "unknown algorithm"),
    ("patches_huge", lambda t: ["info", "--dataset", "cifar10", "--ipc", "1", "--patches", "1000x1000"], "patches"),
    ("patches_huge_distill", lambda t: [D, "--dataset", "cifar10", "--patches", "1000x1000", "--out", "new",
                                        "--no-download"], "patches"),
    ("patches_gaps", lambda t: ["info", "--dataset", "cifar10", "--ipc", "1", "--patches", "2x6"], "leave gaps"),
    ("patches_malformed", lambda t: [D, *base(t), "--patches", "abc", "--out", "new"], "16x6"),
    ("device_tpu", lambda t: [D, *base(t), "--device", "tpu", "--out", "new"], "unknown device"),
    ("config_toml_syntax", lambda t: [D, *base(t), "--config", "bad.toml", "--out", "new"], "bad.toml"),
    ("config_toml_missing", lambda t: [D, *base(t), "--config", "missing.toml", "--out", "new"], "missing.toml"),
    ("profile_unknown", lambda t: [D, *base(t), "--profile", "fast", "--out", "new"], "invalid choice"),
    ("flag_unknown", lambda t: [D, *base(t), "--out", "new", "--frobnicate"], "unrecognized arguments"),
    ("mtt_with_dream", lambda t: [D, *base(t), "--algorithm", "mtt", "--sampling", "dream", "--out", "new"],
     "DREAM sampling does not apply"),
    # users' folders and the record
    ("out_user_folder", lambda t: [D, *base(t), "--out", "userdir"], "did not write"),
    ("out_is_file", lambda t: [D, *base(t), "--out", "afile.txt"], "is a file"),
    ("out_under_file", lambda t: [D, *base(t), "--out", "afile.txt/run"], "is a file"),
    ("out_existing_run", lambda t: [D, *base(t), *RUN_FLAGS, "--out", "run"], "--resume"),
    ("resume_without_checkpoint", lambda t: [D, *base(t), "--out", "new", "--resume"], "nothing to resume"),
    ("resume_changed_lr", lambda t: [D, *base(t), *RUN_FLAGS, "--set", "lr=5.0", "--out", "run", "--resume"],
     "different lr"),
    ("resume_damaged_checkpoint", lambda t: [D, *base(t), *RUN_FLAGS, "--out", "broken_ck", "--resume",
                                             "--steps", "3"], "checkpoint.pt"),
    # data
    ("imagefolder_one_class", lambda t: [D, *base(t, "oneclass"), "--out", "new"], "only one class"),
    ("imagefolder_class_without_train", lambda t: [D, *base(t, "emptyclass"), "--out", "new"],
     "without training images"),
    ("imagefolder_missing", lambda t: [D, *base(t, "nothere"), "--out", "new"], "ImageFolder not found"),
    ("dataset_unknown", lambda t: ["info", "--dataset", "mnist", "--ipc", "1"], "unknown dataset"),
    ("no_download_flag_named", lambda t: [D, "--dataset", "cifar10", "--profile", "smoke", "--data-root", "emptyroot",
                                          "--no-download", "--out", "new"], "without --no-download"),
    # evaluate
    ("evaluate_models_zero", lambda t: ["evaluate", "run", "--models", "0"], "integer >= 1"),
    ("evaluate_models_negative", lambda t: ["evaluate", "run", "--models", "-2"], "integer >= 1"),
    ("evaluate_eval_steps_abc", lambda t: ["evaluate", "run", "--eval-steps", "abc"], "integer >= 1"),
    ("evaluate_eval_steps_zero", lambda t: ["evaluate", "run", "--eval-steps", "0,300"], "integer >= 1"),
    ("evaluate_set_unknown_key", lambda t: ["evaluate", "run", "--set", "nosuchkey=1"], "unknown config key"),
    ("evaluate_set_bad_type", lambda t: ["evaluate", "run", "--set", "bs_d=many"], "bs_d must be an integer"),
    ("evaluate_arch_unknown", lambda t: ["evaluate", "run", "--arch", "nosuchnet"], "invalid choice"),
    ("evaluate_device_tpu", lambda t: ["evaluate", "run", "--device", "tpu"], "unknown device"),
    ("evaluate_missing_run", lambda t: ["evaluate", "nosuchrun"], "does not exist"),
    ("evaluate_not_a_run", lambda t: ["evaluate", "userdir"], "not a finished run"),
    ("evaluate_truncated_poster", lambda t: ["evaluate", "trunc_poster"], "poster.pt"),
    ("evaluate_empty_labels", lambda t: ["evaluate", "empty_labels"], "labels.pt"),
    ("evaluate_broken_config", lambda t: ["evaluate", "broken_config"], "config.json"),
    ("evaluate_out_is_folder", lambda t: ["evaluate", "run", "--out", "userdir"], "is a folder"),
    ("evaluate_baseline_without_dataset", lambda t: ["evaluate", "--baseline", "random"], "needs a RUN"),
    ("evaluate_epochs_zero", lambda t: ["evaluate", "--baseline", "full", "--dataset", "cifar10", "--epochs", "0"],
     "positive number"),
    # export
    ("export_into_user_folder", lambda t: ["export", "run", "--format", "imagefolder", "--dest", "userdir"],
     "not an export"),
    ("export_into_run_itself", lambda t: ["export", "run", "--format", "imagefolder", "--dest", "run"],
     "run folder"),
    ("export_into_run_parent", lambda t: ["export", "run", "--format", "imagefolder", "--dest", "."],
     "run folder"),
    ("export_dest_is_file", lambda t: ["export", "run", "--format", "imagefolder", "--dest", "afile.txt"], "is a file"),
    ("export_pt_over_user_file", lambda t: ["export", "run", "--format", "pt", "--dest", "user.pt"], "not an export"),
    ("export_missing_run", lambda t: ["export", "nosuchrun"], "does not exist"),
    ("export_truncated_poster", lambda t: ["export", "trunc_poster", "--dest", "newexport"], "poster.pt"),
    ("export_format_unknown", lambda t: ["export", "run", "--format", "jpg"], "invalid choice"),
    # other subcommands
    ("info_set_bad_type", lambda t: ["info", "--dataset", "cifar10", "--set", "width=abc"], "width must be"),
    ("experts_zero", lambda t: ["experts", "--dataset", "cifar10", "--n-experts", "0"], "integer >= 1"),
]


@pytest.mark.parametrize("case,argv,text", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tree: Path, case: str, argv, text: str) -> None:
    before = snapshot(tree)
    code, out, err, seconds = podd(argv(tree), tree)
    DURATIONS[case], MESSAGES[case] = seconds, err.strip()
    after = snapshot(tree)
    assert code != 0, f"exit 0 for {case}: {out[-500:]}"
    assert "Traceback" not in err, err[-2000:]
    assert err.count("\n") == 1 and err.endswith("\n"), f"not one line: {err[-2000:]!r}"
    assert text in err, err
    if seconds >= fail_within():  # a busy machine: compare with the reference command timed now
        measure_reference(tree)
    assert seconds < fail_within(), f"{case} took {seconds:.1f} s before failing (bound {fail_within():.1f} s)"
    assert after == before, f"files changed: {sorted(set(after.items()) ^ set(before.items()))[:5]}"


def test_cuda_without_a_gpu(tree: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    before = snapshot(tree)
    code, _, err, seconds = podd(["distill", *base(tree), "--device", "cuda", "--out", "new"], tree)
    assert code == 2 and err.count("\n") == 1 and "no CUDA device" in err and seconds < fail_within()
    assert snapshot(tree) == before


def test_the_suite_has_enough_cases() -> None:
    assert len(CASES) >= 40


def test_ctrl_c_says_how_to_resume(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    env = {**os.environ, "CI": "1", "PODD_DATA_ROOT": str(tree / "emptyroot")}
    cmd = [sys.executable, "-m", "podd_lib", "distill", *base(tree), *RUN_FLAGS, "--steps", "100000",
           "--out", str(out)]
    # A shell's background job starts with SIGINT ignored; the child gets the default back, as in a terminal.
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 300
        while not (out / "checkpoint.pt").exists() and time.time() < deadline and p.poll() is None:
            time.sleep(0.2)
        assert (out / "checkpoint.pt").exists(), p.stderr.read() if p.poll() is not None else "no checkpoint"
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130
    assert err.count("\n") == 1 and "Traceback" not in err and "--resume" in err, err[-2000:]
    assert json.loads((out / "config.json").read_text())["steps"] == 100000


def test_durations_recorded() -> None:
    """Prints every case's time to failure (pytest -s shows them); runs after the cases."""
    if not DURATIONS:
        pytest.skip("no case ran in this session")
    slowest = max((c for c in DURATIONS if c != REFERENCE), key=DURATIONS.get)
    print(f"\nbad-input cases: {len(DURATIONS)}, slowest {slowest} {DURATIONS[slowest]:.2f} s")
    for case, seconds in sorted(DURATIONS.items(), key=lambda kv: -kv[1]):
        print(f"  {seconds:6.2f} s  {case}: {MESSAGES.get(case, '')}")
    assert DURATIONS[slowest] < fail_within()
