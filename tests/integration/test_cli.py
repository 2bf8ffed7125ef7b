"""The `podd` command end to end: info, bad input, distill/evaluate/export on a tiny ImageFolder."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from podd_lib.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_cifar10_09(capsys):
    code, out, _ = run(capsys, "info", "--dataset", "cifar10", "--ipc", "0.9")
    info = json.loads(out)
    assert code == 0
    assert info["poster_height"] * info["poster_width"] <= 0.9 * 10 * 32 * 32
    assert info["geometry"]["n_patches"] == 96
    assert info["labels"]["labels"] == "fixed"


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--ipc", "0"], "IPC must be a positive"),
        (["--ipc", "1", "--set", "class_grid=[5, 3]"], "class grid 5x3"),
        (["--ipc", "1", "--patches", "2x6"], "leave gaps"),
        (["--ipc", "0.05"], "smaller than one"),
        (["--ipc", "1", "--set", "nope=1"], "unknown config key"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, msg):
    code, out, err = run(capsys, "info", "--dataset", "cifar10", *argv)
    assert code == 2 and msg in err and err.count("\n") == 1


def test_unknown_dataset(capsys):
    code, _, err = run(capsys, "info", "--dataset", "mnist", "--ipc", "1")
    assert code == 2 and "unknown dataset" in err


def make_folder(root, n_classes=4, per_class=6, size=32):
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 3)):
        for c in range(n_classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                arr = (rng.random((size, size, 3)) * 80 + c * 40).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


def test_distill_evaluate_export_on_an_imagefolder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CI", "1")
    folder = make_folder(tmp_path / "toy")
    out = tmp_path / "run"
    base = ["--dataset", f"imagefolder:{folder}", "--ipc", "1", "--profile", "smoke", "--order", "identity",
            "--data-root", str(tmp_path), "--no-download", "--device", "cpu"]
    code, _, err = run(capsys, "distill", *base, "--set", "bs=8", "--out", str(out))
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["class_grid"] == [2, 2] and cfg["patch_grid"] == [4, 4] and cfg["n_classes"] == 4
    code, _, err = run(capsys, "distill", *base, "--set", "bs=8", "--out", str(out))
    assert code == 2 and "--resume" in err  # never overwrites a run
    code, printed, err = run(capsys, "evaluate", str(out), "--data-root", str(tmp_path), "--device", "cpu")
    assert code == 0, err
    ev = json.loads((out / "eval.json").read_text())
    assert ev["protocol"]["num_models"] == 2 and "soft labels" in printed and ev["hard"] is not None
    code, _, err = run(capsys, "export", str(out), "--format", "pt")
    assert code == 0, err
    d = torch.load(out / "export" / "distilled.pt", weights_only=False)
    assert d["x"].shape == (16, 3, 32, 32) and d["y"].shape == (16, 4)
    code, _, err = run(capsys, "export", str(out), "--format", "imagefolder", "--dest", str(tmp_path / "exp"))
    assert code == 0, err
    assert len(list((tmp_path / "exp").glob("*/*.png"))) == 16
    assert (tmp_path / "exp" / "soft_labels.json").exists()


def test_other_algorithms_and_experts_on_an_imagefolder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CI", "1")
    folder = make_folder(tmp_path / "toy")
    base = ["--dataset", f"imagefolder:{folder}", "--ipc", "1", "--profile", "smoke", "--set", "order='identity'",
            "--data-root", str(tmp_path), "--no-download", "--device", "cpu", "--set", "real_per_class=2"]
    code, _, err = run(capsys, "distill", *base, "--algorithm", "dm", "--sampling", "dream", "--init", "dream",
                       "--out", str(tmp_path / "dm"))
    assert code == 0, err
    cfg = json.loads((tmp_path / "dm" / "config.json").read_text())
    assert (cfg["algorithm"], cfg["sampling"], cfg["init"]) == ("dm", "dream", "dream")
    mtt = ["--set", "expert_epochs=1", "--set", "max_start_epoch=0", "--set", "syn_steps=2", "--set", "expert_bs=8"]
    code, printed, err = run(capsys, "experts", *base, *mtt, "--n-experts", "2", "--out", str(tmp_path / "ex"))
    assert code == 0, err
    info = json.loads(printed)
    assert info["experts"] == 2 and info["epochs"] == 1 and len(list((tmp_path / "ex").glob("*/expert_*.pt"))) == 2
    code, _, err = run(capsys, "distill", *base, *mtt, "--set", "n_experts=2", "--algorithm", "mtt", "--init", "noise",
                       "--set", f"experts_root={tmp_path / 'ex'}", "--out", str(tmp_path / "mtt"))
    assert code == 0, err
    code, _, err = run(capsys, "distill", *base, "--algorithm", "mtt", "--sampling", "dream", "--out", str(tmp_path / "x"))
    assert code == 2 and "DREAM sampling does not apply" in err and err.count("\n") == 1


def test_keep_freed_memory_flag_and_runtime_switch():
    import subprocess
    import sys

    from podd_lib.cli import build_parser

    args = build_parser().parse_args(["distill", "--dataset", "cifar10", "--out", "x", "--keep-freed-memory"])
    assert args.keep_freed_memory
    assert not build_parser().parse_args(["distill", "--dataset", "cifar10", "--out", "x"]).keep_freed_memory
    # in a child process: the switch lasts for the whole process
    code = ("import torch; from podd_lib.fast.runtime import keep_freed_memory; ok = keep_freed_memory(); "
            "x = torch.ones(96, 128, 32, 32); print(ok, float((x * 2).sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", str(float(2 * 96 * 128 * 32 * 32))]


def test_the_loader_takes_the_config_s_image_size_and_zca_regulariser(tmp_path):
    """An ImageFolder is resized to the config's image_size, and zca_reg reaches the whitening."""
    from podd_lib.config import resolve_config
    from podd_lib.data import load_for_config

    folder = make_folder(tmp_path / "toy", size=20)
    cfg = resolve_config(f"imagefolder:{folder}", 1.0, "smoke", {"image_size": [16, 16], "order": "identity"})
    weak = load_for_config(cfg, str(tmp_path), download=False)
    assert weak.image_size == (16, 16) and weak.x_train.shape[2:] == (16, 16)
    strong = load_for_config(cfg.replace(zca_reg=0.5), str(tmp_path), download=False)
    assert strong.preprocess.reg > weak.preprocess.reg  # the regulariser is reg x the mean eigenvalue
    assert not torch.allclose(strong.x_train, weak.x_train)


def test_run_all_reads_relative_paths_from_the_folder_it_was_run_from(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    log = tmp_path / "calls.log"
    fake = tmp_path / "python"  # answers the version check, records every other call instead of running it
    fake.write_text(f'#!/usr/bin/env bash\nif [ "${{1:-}}" = -c ]; then exec {sys.executable} "$@"; fi\n'
                    f'echo "$* | data=$PODD_DATA_ROOT cifar=$PODD_CIFAR10_ROOT" >> {log}\n')
    fake.chmod(0o755)
    (tmp_path / "data").mkdir()
    (tmp_path / "typed_here").mkdir()
    env = {**os.environ, "PODD_PYTHON": str(fake), "PODD_DATA_ROOT": "../data", "PODD_CIFAR10_ROOT": "../cifar"}
    p = subprocess.run([str(repo / "run_all.sh"), "--profile", "smoke", "--plan", "--slurm-config", "lab.toml",
                        "--slurm-config=/abs/lab.toml"], cwd=tmp_path / "typed_here",
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    runner = [line for line in log.read_text().splitlines() if "podd_lib.kit.runner" in line]
    assert runner == [f"-m podd_lib.kit.runner --profile smoke --data-root {tmp_path / 'data'} --plan "
                      f"--slurm-config {tmp_path / 'typed_here'}/lab.toml --slurm-config /abs/lab.toml | "
                      f"data={tmp_path / 'data'} cifar={tmp_path / 'typed_here'}/../cifar"]
