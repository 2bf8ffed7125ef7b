"""The config schema's type checker: strict types, ranges, lengths, known keys and the rules between keys."""

from __future__ import annotations

import math

import pytest

from podd_lib.config import resolve_config
from podd_lib.errors import PoddError
from podd_lib.validate import Count, Pair, Positive, check_config, conforms


@pytest.mark.parametrize("value,tp,ok", [
    (3, Count, True), (0, Count, False), (True, Count, False), (3.0, Count, False), ("3", Count, False),
    (0.5, Positive, True), (2, Positive, True), (0, Positive, False), (math.inf, Positive, False),
    (math.nan, Positive, False), ([5, 2], Pair, True), ([5], Pair, False), ([5, 2, 1], Pair, False),
    ((5, 2), Pair, False), ([5, 0], Pair, False), ([5, True], Pair, False),
])
def test_types_are_strict(value, tp, ok):
    assert conforms(value, tp) is ok


def test_a_resolved_config_passes_and_comes_back_typed():
    cfg = resolve_config("cifar10", 1.0, "smoke")
    checked = check_config(cfg.to_dict())
    assert checked.width == cfg.width and checked.patch_grid == cfg.patch_grid
    with pytest.raises(AttributeError):
        checked.width = 3  # frozen


def test_derived_keys_are_read_back_but_never_set_by_a_user():
    cfg = resolve_config("cifar10", 1.0, "smoke")
    assert "label_kind" in cfg.to_dict()
    check_config(cfg.to_dict(), {"eval_models": 2})
    with pytest.raises(PoddError, match="unknown config key.*label_kind"):
        check_config(cfg.to_dict(), {"label_kind": "fixed"})
    with pytest.raises(PoddError, match="unknown config key.*nosuch"):
        check_config({**cfg.to_dict(), "nosuch": 1})


@pytest.mark.parametrize("over,text", [
    ({"per_class_posters": True, "init": "class_areas"}, "per-class posters start from N(0, 1) noise only"),
    ({"init": "zeros"}, "unknown init 'zeros'; choose one of normal, class_areas, real, dream"),
    ({"sampling": "greedy"}, "unknown sampling 'greedy'"),
    ({"eval_steps": []}, "eval_steps must be a non-empty list of integers >= 1, got []"),
    ({"posters": {"1.0": [60]}}, "posters must be a table whose values are each a list of two integers >= 1"),
    ({"fixed_curriculum": -1}, "fixed_curriculum must be an integer >= 0, got -1"),
])
def test_bad_values_and_broken_rules_fail_in_one_line(over, text):
    with pytest.raises(PoddError) as e:
        resolve_config("cifar10", 1.0, "smoke", over)
    assert text in str(e.value) and "\n" not in str(e.value)
