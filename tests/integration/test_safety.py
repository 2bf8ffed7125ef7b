"""What the kit may write and what it records: markers, exports, resume records, data root, modes, help."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from podd_lib.cli import build_parser, main
from podd_lib.errors import PoddError
from tests.helpers import make_imagefolder


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_export_resume_and_evaluate_keep_users_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("PODD_DATA_ROOT", str(tmp_path / "elsewhere"))  # evaluate must use the run's root
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        folder = make_imagefolder(tmp_path / "toy")
        flags = ["--dataset", f"imagefolder:{folder}", "--profile", "smoke", "--order", "identity", "--data-root",
                 str(tmp_path), "--no-download", "--device", "cpu", "--set", "bs=8", "--no-zca",
                 ]
        code, _, err = run(capsys, "distill", *flags, "--out", "run")
        assert code == 0, err
    finally:
        os.umask(old)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["data_root"] == str(tmp_path) and "resumes" not in cfg
    for name in ("config.json", "poster.pt", "labels.pt", "metrics.csv", "checkpoint.pt"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o644, name
    # resume: steps may grow, and the change is recorded with the step where it happened
    code, _, err = run(capsys, "distill", *flags, "--out", "run", "--resume", "--steps", "3")
    assert code == 0, err
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["steps"] == 3 and cfg["resumes"] == [{"step": 2, "changed": {"steps": [2, 3]}}]
    code, _, err = run(capsys, "distill", *flags, "--out", "run", "--resume", "--steps", "3", "--set", "width=16")
    assert code == 2 and "different width" in err
    # evaluate without --data-root: the run's recorded data root, not $PODD_DATA_ROOT
    code, _, err = run(capsys, "evaluate", "run", "--device", "cpu")
    assert code == 0, err
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "data").exists()
    # exports: both default destinations live side by side; a second export replaces the first
    code, _, err = run(capsys, "export", "run", "--format", "pt")
    assert code == 0, err
    code, _, err = run(capsys, "export", "run", "--format", "imagefolder")
    assert code == 0, err
    assert (tmp_path / "run" / "export" / "distilled.pt").is_file()
    pngs = sorted((tmp_path / "run" / "export-imagefolder").glob("*/*.png"))
    assert len(pngs) == 16
    code, _, err = run(capsys, "export", "run", "--format", "imagefolder")
    assert code == 0, err
    assert sorted((tmp_path / "run" / "export-imagefolder").glob("*/*.png")) == pngs
    assert not [p for p in (tmp_path / "run").iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    d = torch.load(tmp_path / "run" / "export" / "distilled.pt", weights_only=False)
    assert d["x"].shape == (16, 3, 32, 32)
    # --dest . in an empty folder writes there; a pt file export is replaced only when it is ours
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    code, _, err = run(capsys, "export", str(tmp_path / "run"), "--format", "imagefolder", "--dest", ".")
    assert code == 0, err
    assert len(list((tmp_path / "empty").glob("*/*.png"))) == 16
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    for _ in range(2):
        code, _, err = run(capsys, "export", str(tmp_path / "run"), "--format", "pt", "--dest", str(tmp_path / "d.pt"))
        assert code == 0, err


def test_every_option_shows_its_default_and_the_profile_matches_run_all():
    parser = build_parser()
    subs = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict)).choices
    for name, sp in subs.items():
        text = sp.format_help()
        for action in sp._actions:
            if action.option_strings and action.dest != "help" and not action.required:
                assert action.help and ("default" in action.help or action.default not in (None, False)), \
                    (name, action.dest)
        if "--profile" in text:
            assert "default: quick" in " ".join(text.split())
    run_all = open(os.path.join(os.path.dirname(__file__), "..", "..", "run_all.sh")).read()
    assert 'PROFILE="quick"' in run_all or "PROFILE=quick" in run_all or "profile: quick" in run_all


def test_a_failed_download_leaves_no_data_folder(tmp_path, monkeypatch):
    import torchvision

    from podd_lib.data import load_dataset

    def offline(*a, **k):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(PoddError, match="could not be downloaded"):
        load_dataset("cifar10", data_root=tmp_path / "data", download=True)
    assert not (tmp_path / "data").exists()


def test_tests_without_shared_data_download_or_say_what_to_set(tmp_path, monkeypatch):
    import torchvision

    from tests import helpers

    def offline(*a, **k):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(pytest.fail.Exception) as info:
        helpers.download_cifar10(tmp_path / "cache")
    msg = str(info.value)
    assert "PODD_CIFAR10_ROOT" in msg and "\n" not in msg and not (tmp_path / "cache").exists()
    monkeypatch.setenv("PODD_TEST_CACHE", str(tmp_path / "c2"))
    assert helpers.download_cache() == tmp_path / "c2"


def test_config_file_and_set_go_through_one_schema(tmp_path):
    from podd_lib.config import read_config_file, resolve_config

    (tmp_path / "c.toml").write_text("width = 16\nlr = 0.5\n")
    cfg = resolve_config("cifar10", 1, "smoke", read_config_file(str(tmp_path / "c.toml")))
    assert (cfg.width, cfg.lr) == (16, 0.5)
    for over, msg in (({"width": 3.5}, "width must be an integer >= 1"), ({"zca": "maybe"}, "zca must be true"),
                      ({"eval_steps": []}, "eval_steps must be"), ({"steps": 0}, "steps must be an integer >= 1"),
                      ({"image_size": [32]}, "image_size must be a list of two")):
        with pytest.raises(PoddError, match=msg):
            resolve_config("cifar10", 1, "smoke", over)


def test_the_kit_never_unpickles_code():
    """Every torch.load in the library loads weights only (a run file may come from anyone)."""
    import re
    from pathlib import Path

    import podd_lib

    root = Path(podd_lib.__file__).parent
    for path in root.rglob("*.py"):
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
            assert "weights_only=True" in call, f"{path}: {call}"


def test_safe_load_refuses_code_and_names_the_file(tmp_path):
    from podd_lib.safety import load_torch_file

    from tests.helpers import Payload

    torch.save({"poster": torch.zeros(3), "x": Payload(tmp_path / "PWNED")}, tmp_path / "poster.pt")
    with pytest.raises(PoddError, match=r"poster.pt holds objects other than tensors"):
        load_torch_file(tmp_path / "poster.pt")
    assert not (tmp_path / "PWNED").exists()
    (tmp_path / "half.pt").write_bytes((tmp_path / "poster.pt").read_bytes()[:100])
    with pytest.raises(PoddError, match="half.pt is damaged"):
        load_torch_file(tmp_path / "half.pt")


@pytest.mark.parametrize("name", ["../../../esc0", "a/b", "..", ".", ".hidden", "", "nul\x00byte", "tab\tname",
                                  "cl\udcffass", 3, None])
def test_names_that_cannot_be_folders_are_refused(name):
    from podd_lib.safety import check_name

    with pytest.raises(PoddError, match="class name"):
        check_name(name, "class name", "poster.pt")


@pytest.mark.parametrize("name", ["airplane", "n01443537", "Black_footed_Albatross", "class 1", "é"])
def test_plain_class_names_pass(name):
    from podd_lib.safety import check_name

    assert check_name(name, "class name", "poster.pt") == name


def test_a_folder_lock_is_reentrant_and_leaves_no_trace_when_nothing_was_written(tmp_path):
    from podd_lib.safety import LOCK, folder_lock

    with folder_lock(tmp_path / "new"):
        with folder_lock(tmp_path / "new"):  # the same process may enter again (the kit, then distill)
            assert (tmp_path / "new" / LOCK).is_file()
    assert not (tmp_path / "new").exists()
    with folder_lock(tmp_path / "kept"):
        (tmp_path / "kept" / "config.json").write_text("{}")
    assert (tmp_path / "kept" / LOCK).read_text() == ""  # names no one once released
