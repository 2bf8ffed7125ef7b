"""Bad input through the real `podd` command: one line, non-zero exit, fast, and no file touched.

Every case runs `python -m podd_lib ...` in a subprocess inside one fixture tree (a tiny
ImageFolder, a finished smoke run, damaged copies of it, a user's folder and a user's file) and
checks: exit status non-zero, exactly one line on stderr and no traceback, the command failed
within FAIL_WITHIN seconds, and every file and folder of the tree is byte-for-byte as before
(nothing new appears either, e.g. no empty data folder). Durations are printed by
test_durations_recorded at the end (run pytest with -s to see them).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import Payload, make_imagefolder, plant_payload

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
    """Every path under root -> sha256 of its bytes ('dir' for folders, its target for a symlink) and its mode."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath) / d
            out[str(p.relative_to(root))] = "dir"
        for f in filenames:
            p = Path(dirpath) / f
            if p.is_symlink():
                out[str(p.relative_to(root))] = "link to " + os.readlink(p)
                continue
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
    return out


def make_bad_class_name(root: Path) -> None:
    """An ImageFolder whose class0 folder has a name that is not UTF-8 (bytes 0xff)."""
    make_imagefolder(root)
    for split in ("train", "test"):
        os.rename(os.fsencode(root / split / "class0"), os.fsencode(root / split) + b"/cl\xffass0")


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
    shutil.copytree(root / "run", root / "evil_poster")  # payloads: running them creates PWNED-* folders
    plant_payload(root / "evil_poster" / "poster.pt", root / "PWNED-poster", "dataset")
    shutil.copytree(root / "run", root / "evil_ck")
    plant_payload(root / "evil_ck" / "checkpoint.pt", root / "PWNED-checkpoint", "ema")
    shutil.copy(root / "run" / "poster.pt", root / "evil.pt")
    plant_payload(root / "evil.pt", root / "PWNED-dest", "x")
    shutil.copytree(root / "run", root / "escape")  # class names that climb out of an export folder
    import torch

    poster = torch.load(root / "escape" / "poster.pt", weights_only=True)
    poster["classes"] = [f"../../../esc{k}" for k in range(len(poster["classes"]))]
    torch.save(poster, root / "escape" / "poster.pt")
    make_bad_class_name(root / "badname")
    os.symlink(root / "nowhere" / "run", root / "dangling")
    for fmt in ("imagefolder", "pt"):  # previous exports, each with a file the user added
        code, _, err, _ = podd(["export", "run", "--format", fmt, "--dest", f"prev_{fmt}"], root)
        assert code == 0, err
        (root / f"prev_{fmt}" / "my_notes.txt").write_text("mine\n")
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
    ("out_dangling_symlink", lambda t: [D, *base(t), "--out", "dangling"], "does not exist"),
    ("seed_huge", lambda t: [D, *base(t), "--seed", "100000000000000000000000", "--out", "new"], "seed must be"),
    ("seed_negative", lambda t: [D, *base(t), "--seed", "-1", "--out", "new"], "seed must be"),
    ("set_seed_huge", lambda t: [D, *base(t), "--set", "seed=100000000000000000000000", "--out", "new"],
     "seed must be"),
    # run files are data: a pickle that would run code is refused, nothing of it runs
    ("resume_checkpoint_with_code", lambda t: [D, *base(t), *RUN_FLAGS, "--out", "evil_ck", "--resume",
                                               "--steps", "3"], "checkpoint.pt holds objects other than tensors"),
    ("evaluate_poster_with_code", lambda t: ["evaluate", "evil_poster"], "poster.pt holds objects other than tensors"),
    ("export_poster_with_code", lambda t: ["export", "evil_poster", "--dest", "newexport"],
     "poster.pt holds objects other than tensors"),
    ("export_pt_over_file_with_code", lambda t: ["export", "run", "--format", "pt", "--dest", "evil.pt"],
     "not an export"),
    ("export_class_names_climbing_out", lambda t: ["export", "escape", "--format", "imagefolder", "--dest", "newexp"],
     "contains a path separator"),
    ("evaluate_class_names_climbing_out", lambda t: ["evaluate", "escape"], "contains a path separator"),
    # a previous export holding a user's file is not replaced
    ("reexport_imagefolder_with_user_file", lambda t: ["export", "run", "--format", "imagefolder", "--dest",
                                                       "prev_imagefolder"], "my_notes.txt"),
    ("reexport_pt_with_user_file", lambda t: ["export", "run", "--format", "pt", "--dest", "prev_pt"],
     "my_notes.txt"),
    # data
    ("imagefolder_class_not_utf8", lambda t: [D, *base(t, "badname"), "--out", "new"], "class folder"),
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
    ("evaluate_out_user_file", lambda t: ["evaluate", "run", "--out", "afile.txt"], "not a file the kit wrote"),
    ("evaluate_models_huge", lambda t: ["evaluate", "run", "--models", "100000000", "--device", "cpu"],
     "use fewer models"),
    ("evaluate_run_with_seed", lambda t: ["evaluate", "run", "--seed", "5"], "--seed does not apply"),
    ("evaluate_run_with_run_settings", lambda t: ["evaluate", "run", "--ipc", "3", "--labels", "learned", "--patches",
                                                  "2x2", "--no-zca", "--dataset", "cifar100", "--profile", "paper"],
     "--dataset, --ipc, --profile, --labels, --patches, --no-zca do not apply"),
    ("evaluate_run_with_baseline_flags", lambda t: ["evaluate", "run", "--baseline", "full", "--epochs", "2"],
     "--baseline, --epochs do not apply"),
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
    ("plan_json_over_user_file", lambda t: ["plan", "--json", "afile.txt"], "not a file the kit wrote"),
    ("plan_seconds_per_step_negative", lambda t: ["plan", "--seconds-per-step", "-1"], "positive number"),
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


def test_no_payload_ran(tree: Path) -> None:
    """After every case: no payload planted in a run file has run (each would have made its PWNED-* folder)."""
    assert not list(tree.glob("PWNED-*")) and not list(tree.parent.glob("esc*"))


def one_line_failure(code: int, err: str, text: str) -> None:
    """Exit status non-zero, one line on stderr holding text, no traceback."""
    assert code != 0 and "Traceback" not in err, err[-2000:]
    assert err.count("\n") == 1 and text in err, err[-2000:]


def test_second_writer_of_a_run_folder_fails_naming_the_first(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "shared"
    env = {**os.environ, "CI": "1", "PODD_DATA_ROOT": str(tree / "emptyroot")}
    cmd = [sys.executable, "-m", "podd_lib", "distill", *base(tree), *RUN_FLAGS, "--steps", "100000", "--out", str(out)]
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        lock = out / ".podd-kit.lock"
        while not (lock.is_file() and lock.read_text()) and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert first.poll() is None, first.stderr.read()
        for resume in ([], ["--resume"]):  # the same new --out, or resuming it: both name the first
            code, _, err, _ = podd(["distill", *base(tree), *RUN_FLAGS, "--steps", "100000", "--out", str(out),
                                    *resume], tmp_path)
            one_line_failure(code, err, f"podd process {first.pid}")
    finally:
        first.kill()
        first.communicate(timeout=60)


def test_a_diverging_run_stops_in_one_line_and_keeps_its_checkpoint(tree: Path, tmp_path: Path) -> None:
    code, _, err, _ = podd(["distill", *base(tree), *RUN_FLAGS, "--set", "lr=1e30", "--set", "checkpoint_every=1",
                            "--steps", "20", "--out", "diverged"], tmp_path)
    one_line_failure(code, err, "diverged")
    assert "last good checkpoint" in err and not (tmp_path / "diverged" / "poster.pt").exists()


def test_a_full_disk_is_one_line(tree: Path, tmp_path: Path) -> None:
    """A file size limit (as a full disk) while writing: one line with the file, no half-written file."""
    import resource

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    env = {**os.environ, "CI": "1", "PODD_DATA_ROOT": str(tree / "emptyroot")}
    for argv in (["export", str(tree / "run"), "--format", "pt", "--dest", "big.pt"],
                 ["distill", *base(tree), *RUN_FLAGS, "--out", "limited"]):
        p = subprocess.run([sys.executable, "-m", "podd_lib", *argv], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300, preexec_fn=small_files)
        one_line_failure(p.returncode, p.stderr, "File too large (")
    assert not (tmp_path / "big.pt").exists() and not list(tmp_path.glob(".big.pt*"))


def test_the_run_cache_recomputes_a_damaged_result_and_never_runs_a_run_file(tree: Path, tmp_path: Path,
                                                                           monkeypatch) -> None:
    from podd_lib.errors import PoddError
    from podd_lib.kit import experiments

    monkeypatch.setenv("CI", "1")
    monkeypatch.delenv("PODD_RENDER_ONLY", raising=False)
    args = dict(dataset=f"imagefolder:{tree / 'toy'}", ipc=1.0, profile="smoke", out_dir=tmp_path,
                overrides={"n_classes": 4, "image_size": [32, 32], "bs": 8, "zca": False, "order": "identity",
                           "eval_steps": [2], "eval_models": 1},
                data_root=str(tree), device="cpu", hard_labels=False)
    first = experiments.distill_and_evaluate(**args)
    result = Path(first["run_dir"]) / "result.json"
    result.write_text(result.read_text()[:40])  # a truncated cache entry
    with pytest.warns(UserWarning, match="result.json is damaged"):
        again = experiments.distill_and_evaluate(**args)
    assert again["summary"] == first["summary"] and json.loads(result.read_text())["summary"] == first["summary"]
    result.unlink()  # a synced run folder whose checkpoint carries code
    plant_payload(Path(first["run_dir"]) / "checkpoint.pt", tmp_path / "PWNED", "ema")
    with pytest.raises(PoddError, match="checkpoint.pt holds objects other than tensors"):
        experiments.distill_and_evaluate(**args)
    assert not (tmp_path / "PWNED").exists()


def test_podd_alone_lists_its_commands_and_has_a_version(tree: Path) -> None:
    code, _, err, _ = podd([], tree)
    assert code == 2 and all(c in err for c in ("distill", "evaluate", "export", "plan"))
    code, out, _, _ = podd(["--version"], tree)
    assert code == 0 and out.startswith("podd-kit ")


def test_sigterm_says_how_to_resume(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "terminated"
    env = {**os.environ, "CI": "1", "PODD_DATA_ROOT": str(tree / "emptyroot")}
    cmd = [sys.executable, "-m", "podd_lib", "distill", *base(tree), *RUN_FLAGS, "--steps", "100000", "--out", str(out)]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (out / "checkpoint.pt").exists() and time.time() < deadline and p.poll() is None:
            time.sleep(0.2)
        assert (out / "checkpoint.pt").exists(), p.stderr.read() if p.poll() is not None else "no checkpoint"
        p.terminate()
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143
    one_line_failure(p.returncode, err, "--resume")


def test_an_interrupted_exports_leftovers_are_removed(tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tree / "run", run)
    left = run / ".export-imagefolder.tmp-4194999"  # above the kernel's pid range: its process is gone
    (left / "class0").mkdir(parents=True)
    code, _, err, _ = podd(["export", str(run), "--format", "imagefolder"], tmp_path)
    assert code == 0, err
    assert not left.exists() and (run / "export-imagefolder" / "soft_labels.json").is_file()


@contextlib.contextmanager
def held_by_another(lock_path: Path) -> Iterator[None]:
    """A kit lock held as another podd process holds it: the file locked (by another open file) and naming its holder."""
    from filelock import FileLock

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path), timeout=0)
    lock.acquire()
    lock_path.write_text(json.dumps({"pid": 4242, "host": "elsewhere", "command": "podd first"}))
    try:
        yield
    finally:
        lock.release()
        lock_path.unlink(missing_ok=True)


FIRST = "is being written by podd process 4242 on elsewhere (podd first)"


@pytest.mark.parametrize("fmt,dest", [("imagefolder", "exp"), ("pt", "exp"), ("pt", "exp.pt")])
def test_a_second_export_to_the_same_dest_fails_naming_the_first(tree: Path, tmp_path: Path, fmt: str,
                                                                  dest: str) -> None:
    from podd_lib.safety import output_lock_path

    with held_by_another(output_lock_path(tmp_path / dest)):
        code, _, err, _ = podd(["export", str(tree / "run"), "--format", fmt, "--dest", dest], tmp_path)
        one_line_failure(code, err, f"--dest {dest} {FIRST}")
    assert sorted(os.listdir(tmp_path)) == []
    code, _, err, _ = podd(["export", str(tree / "run"), "--format", fmt, "--dest", dest], tmp_path)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == [dest]  # the lock beside the export is gone once it is written


@pytest.mark.parametrize("kind", ["random", "full"])
def test_a_second_baseline_in_the_same_cache_folder_fails_naming_the_first(tree: Path, tmp_path: Path, monkeypatch,
                                                                            kind: str) -> None:
    from podd_lib.config import resolve_config
    from podd_lib.errors import PoddError
    from podd_lib.kit import experiments
    from podd_lib.safety import LOCK

    def no_data(*a, **k):
        raise AssertionError("the data was loaded although the folder is locked")

    monkeypatch.setattr(experiments, "load_real", no_data)
    monkeypatch.delenv("PODD_RENDER_ONLY", raising=False)
    dataset, over = f"imagefolder:{tree / 'toy'}", {"n_classes": 4, "image_size": [32, 32], "zca": False}
    if kind == "random":
        folder = experiments.random_dir(resolve_config(dataset, 1.0, "smoke", over), 1.0, tmp_path, dataset)
        call = lambda: experiments.random_real_baseline(dataset, 1.0, "smoke", tmp_path, over, str(tree), device="cpu")
    else:
        cfg = resolve_config(dataset, 1.0, "smoke", over)
        folder = experiments.full_dir(cfg, cfg.full_epochs, tmp_path, dataset)
        call = lambda: experiments.full_data_baseline(dataset, "smoke", tmp_path, over, str(tree), device="cpu")
    with held_by_another(folder / LOCK):
        with pytest.raises(PoddError, match=f"run folder {re.escape(str(folder))} {re.escape(FIRST)}"):
            call()


def count_training_steps(monkeypatch) -> list[int]:
    """Record every optimiser step of evaluation networks (one per step of the K networks trained together)."""
    from podd_lib import training

    steps: list[int] = []
    adam_step = training.adam_step

    def counted(*args, **kwargs):
        steps.append(1)
        return adam_step(*args, **kwargs)

    monkeypatch.setattr(training, "adam_step", counted)
    return steps


def in_process(capsys, argv: list[str]) -> tuple[int, str, str]:
    """podd's main() in this process: (exit status, stdout, stderr)."""
    from podd_lib.cli import main

    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


EVAL = ["--models", "2", "--eval-steps", "10,20", "--device", "cpu"]  # 20 steps per label kind, a save every 2


def test_an_interrupted_evaluation_resumes_where_it_stopped(tree: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from podd_lib import training

    monkeypatch.setenv("CI", "1")
    run = tmp_path / "run"
    shutil.copytree(tree / "run", run)
    steps = count_training_steps(monkeypatch)
    code, _, err = in_process(capsys, ["evaluate", str(run), *EVAL, "--out", str(tmp_path / "whole.json")])
    assert code == 0 and len(steps) == 40 and not (run / "eval-progress").exists(), err

    save = training.atomic_torch_save

    def save_then_stop(obj, path) -> None:  # as a kill right after the first saved state
        save(obj, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "atomic_torch_save", save_then_stop)
    steps.clear()
    code, _, err = in_process(capsys, ["evaluate", str(run), *EVAL, "--out", str(tmp_path / "resumed.json")])
    assert code == 130 and err.count("\n") == 1
    assert f"what was finished is kept in {run / 'eval-progress'}: run the same command again" in err, err
    trained_before = len(steps)
    monkeypatch.setattr(training, "atomic_torch_save", save)
    steps.clear()
    code, _, err = in_process(capsys, ["evaluate", str(run), *EVAL, "--out", str(tmp_path / "resumed.json")])
    assert code == 0, err
    assert 0 < trained_before and len(steps) == 40 - trained_before  # the steps done before are not redone
    whole, resumed = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("whole", "resumed"))
    for kind in ("soft", "hard"):
        assert resumed[kind]["by_step"] == whole[kind]["by_step"]  # bit for bit: the same draws, the same networks
    assert not (run / "eval-progress").exists()


@pytest.mark.parametrize("err_no", [errno.ENOSPC, errno.EACCES], ids=["full_disk", "read_only"])
def test_evaluate_keeps_a_finished_evaluation_when_its_out_file_cannot_be_written(tree: Path, tmp_path: Path,
                                                                                  monkeypatch, capsys,
                                                                                  err_no: int) -> None:
    import builtins

    import podd_lib.io

    monkeypatch.setenv("CI", "1")
    run, out = tmp_path / "run", tmp_path / "results" / "eval.json"
    shutil.copytree(tree / "run", run)
    out.parent.mkdir()

    def failing_open(path, *args, **kwargs):  # the temporary file of --out cannot be written
        if Path(path).name.startswith(f".{out.name}."):
            raise OSError(err_no, os.strerror(err_no))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(podd_lib.io, "open", failing_open, raising=False)
    code, stdout, err = in_process(capsys, ["evaluate", str(run), *EVAL, "--out", str(out)])
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err == (f"podd: error: {os.strerror(err_no)} ({out}); what was finished is kept in "
                   f"{run / 'eval-progress'}: run the same command again to continue from it\n")
    assert os.listdir(out.parent) == []  # no partial --out, no temporary file
    monkeypatch.delattr(podd_lib.io, "open")
    steps = count_training_steps(monkeypatch)
    code, _, err = in_process(capsys, ["evaluate", str(run), *EVAL, "--out", str(out)])
    assert code == 0 and steps == [], err  # written from the kept evaluation, nothing trained again
    assert json.loads(out.read_text())["soft"]["by_step"] == json.loads(stdout.splitlines()[0])["soft"]["by_step"]
    assert not (run / "eval-progress").exists()


def test_a_run_folder_that_becomes_read_only_keeps_its_last_checkpoint(tree: Path, tmp_path: Path, monkeypatch,
                                                                        capsys) -> None:
    monkeypatch.setenv("CI", "1")
    out = tmp_path / "run"
    argv = ["distill", *base(tree), *RUN_FLAGS, "--steps", "4", "--set", "checkpoint_every=2", "--out", str(out)]
    replace, saves = os.replace, []

    def read_only_after_first_checkpoint(src, dst) -> None:
        if Path(dst).name == "checkpoint.pt":
            saves.append(dst)
            if len(saves) > 1:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", read_only_after_first_checkpoint)
    code, _, err = in_process(capsys, argv)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err == (f"podd: error: Permission denied ({out / 'checkpoint.pt'}); the last checkpoint is in {out}: "
                   f"run the same command with --resume to continue\n")
    monkeypatch.setattr(os, "replace", replace)
    assert not list(out.glob(".checkpoint.pt.*"))  # no temporary file left
    code, _, err = in_process(capsys, [*argv, "--resume"])
    assert code == 0 and (out / "poster.pt").is_file(), err


@pytest.mark.parametrize("command", ["distill", "evaluate"])
def test_a_read_only_output_folder_is_one_line_before_any_data_is_read(tree: Path, tmp_path: Path, monkeypatch,
                                                                        capsys, command: str) -> None:
    import podd_lib.safety

    monkeypatch.setenv("CI", "1")
    monkeypatch.setattr(podd_lib.safety.os, "access", lambda path, mode: Path(path) != tmp_path)
    monkeypatch.setattr("podd_lib.data.load_for_config", lambda *a, **k: pytest.fail("data was read"))
    argv = (["distill", *base(tree), "--out", str(tmp_path / "new")] if command == "distill"
            else ["evaluate", str(tree / "run"), "--out", str(tmp_path / "eval.json")])
    code, _, err = in_process(capsys, argv)
    target = tmp_path / ("new" if command == "distill" else "eval.json")
    assert code == 2 and err == f"podd: error: --out {target}: cannot write in {tmp_path} (permission denied)\n"


ORDER_FILES = {  # name -> (file content, None for no file; the dataset; the one-line message)
    "missing": (None, "cifar10", "cannot read class order file"),
    "bad_json": ("[[\"airplane\",", "cifar10", "is not valid JSON"),
    "not_rows": ('{"a": 1}', "cifar10", "must hold a JSON list of rows"),
    "unknown_name": (json.dumps([["airplane", "automobile", "bird", "cat", "deer"],
                                 ["dog", "frog", "horse", "ship", "lorry"]]), "cifar10", "class 'lorry' is not one of"),
    "wrong_shape": (json.dumps([["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                 "truck"]]), "cifar10", "must be 2 rows of 5 class names"),
    "imagefolder_unknown_name": (json.dumps([["class0", "class1"], ["class2", "class9"]]), "toy",
                                 "class 'class9' is not one of"),
    "names_unknown_until_the_data_twice": (json.dumps([["apple"] * 10] * 10), "cifar100", "names 'apple' more than once"),
    "names_unknown_until_the_data_shape": (json.dumps([["apple"]]), "cifar100", "must be 10 rows of 10 class names"),
}


@pytest.mark.parametrize("case", list(ORDER_FILES))
def test_a_bad_class_order_file_fails_before_any_data_is_read(tree: Path, tmp_path: Path, monkeypatch, capsys,
                                                               case: str) -> None:
    content, dataset, text = ORDER_FILES[case]
    path = tmp_path / "order.json"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("CI", "1")
    monkeypatch.setattr("podd_lib.data.load_for_config", lambda *a, **k: pytest.fail("data was read"))
    data = base(tree) if dataset == "toy" else ["--dataset", dataset, "--ipc", "1", "--profile", "smoke",
                                                 "--no-download", "--device", "cpu"]
    code, _, err = in_process(capsys, ["distill", *data, "--order", f"file:{path}", "--out", str(tmp_path / "run")])
    assert code == 2 and err.count("\n") == 1 and text in err, err
    assert sorted(os.listdir(tmp_path)) == (["order.json"] if content is not None else [])


def test_a_run_on_a_relative_imagefolder_path_is_evaluated_from_another_folder(tmp_path: Path, monkeypatch,
                                                                                 capsys) -> None:
    from podd_lib.config import Config, resolve_config
    from podd_lib.kit.experiments import config_key

    monkeypatch.setenv("CI", "1")
    make_imagefolder(tmp_path / "project" / "toy")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    code, _, err = in_process(capsys, ["distill", "--dataset", "imagefolder:toy", "--profile", "smoke", "--order",
                                       "identity", "--no-download", "--device", "cpu", *RUN_FLAGS, "--steps", "2",
                                       "--out", "run"])
    assert code == 0, err
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, _, err = in_process(capsys, ["evaluate", "../project/run", "--models", "1", "--eval-steps", "2", "--device",
                                       "cpu", "--out", "eval.json"])
    assert code == 0, err
    assert json.loads((tmp_path / "elsewhere" / "eval.json").read_text())["soft"]["final"]["step"] == 2
    cfg = json.loads((tmp_path / "project" / "run" / "config.json").read_text())
    assert cfg["dataset"] == "imagefolder:toy" and cfg["dataset_path"] == str(tmp_path / "project" / "toy")
    resolved = resolve_config("imagefolder:toy", 1.0, "smoke")  # the run key keeps the path as given
    without = Config.from_dict({k: v for k, v in resolved.to_dict().items() if k != "dataset_path"})
    assert config_key(resolved) == config_key(without)
