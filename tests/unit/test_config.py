"""The resolved config: one frozen object, read by attribute, whose to_dict is config.json and the run key."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from pathlib import Path

import pytest

from podd_lib.config import Config, resolve_config, with_data
from podd_lib.errors import PoddError
from podd_lib.kit.experiments import config_key
from podd_lib.run import apply_backend, read_config
from podd_lib.validate import DERIVED_KEYS, FIELDS, schema_fields

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "smoke_config.json"  # a smoke run's config.json


def test_a_config_json_written_before_the_object_loads_as_it_was():
    written = json.loads(FIXTURE.read_text())
    cfg = read_config(FIXTURE)
    assert isinstance(cfg, Config) and cfg.to_dict() == written
    assert list(cfg.to_dict()) == list(written)  # the same keys, in the same order
    assert (cfg.width, cfg.backend, cfg.label_kind, cfg.geometry["n_patches"]) == (8, "fast", "fixed", 96)


def test_to_dict_holds_only_the_keys_the_config_was_resolved_with():
    cfg = resolve_config("cifar100", 1.0, "smoke")
    held = cfg.to_dict()
    assert "fixed_labels_from_ipc" not in held and "data_root" not in held and "patches" not in held
    assert cfg.data_root is None  # an attribute all the same, at the schema's default
    assert cfg.label_kind == "learned"  # CIFAR-100 names no IPC from which labels are fixed
    assert set(held) <= set(schema_fields()) | DERIVED_KEYS


def test_the_config_is_frozen_and_changes_into_a_new_checked_object():
    cfg = resolve_config("cifar10", 1.0, "smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.width = 3
    wide = cfg.replace(width=64, data_root="/data")
    assert (cfg.width, wide.width, wide.data_root) == (8, 64, "/data") and "data_root" not in cfg.to_dict()
    assert list(wide.to_dict())[-1] == "data_root"  # a key it did not hold joins at the end
    with pytest.raises(PoddError, match="width must be an integer >= 1"):
        cfg.replace(width=0)
    held = cfg.to_dict()
    held["eval_steps"].append(9)
    assert cfg.eval_steps == [5]  # to_dict hands out copies


def test_the_backend_is_resolved_into_a_new_config():
    cfg = resolve_config("cifar10", 1.0, "smoke", {"backend": "reference"})
    ref = apply_backend(cfg, "cpu")
    assert (cfg.backend, cfg.channels_last) == ("reference", True)
    assert (ref.backend, ref.channels_last, ref.fused_blocks, ref.cpu_kernels) == ("reference", False, False, False)


def test_what_only_the_data_says_is_resolved_in_one_place(tmp_path):
    cfg = resolve_config(f"imagefolder:{tmp_path}", 1.0, "smoke", {"order": "identity"})
    assert cfg.n_classes == 0 and cfg.class_grid == "auto"
    known = with_data(cfg, 6, (16, 16))
    assert (known.n_classes, known.image_size, known.class_grid, known.patch_grid) == (6, [16, 16], [3, 2], [6, 4])
    cifar = resolve_config("cifar10", 1.0, "smoke")
    assert with_data(cifar, 10, (32, 32)) is cifar
    with pytest.raises(PoddError, match="cifar10 config expects 10 classes but the data has 4"):
        with_data(cifar, 4, (32, 32))


def test_every_setting_is_an_attribute_and_the_derived_keys_are_fields():
    cfg = resolve_config("cifar10", 1.0, "smoke", {"algorithm": "mtt"})
    names = {f.name for f in dataclasses.fields(cfg)}
    assert set(schema_fields()) <= names and DERIVED_KEYS <= names and set(FIELDS) <= names
    assert (cfg.algorithm, cfg.syn_steps, cfg.dream_iters) == ("mtt", 2, 20)


def test_a_config_pickles_and_copies_as_what_it_holds():
    cfg = resolve_config("cifar10", 0.5, "smoke", {"seed": 2})
    for twin in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg)):
        assert twin == cfg and twin.to_dict() == cfg.to_dict() and config_key(twin) == config_key(cfg)
