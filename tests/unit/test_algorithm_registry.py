"""An algorithm is one module plus one registry entry: its settings reach the schema, the configs and run keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from podd_lib.algorithms import registry
from podd_lib.algorithms.registry import Setting
from podd_lib.config import algorithm_defaults, irrelevant_keys, resolve_config
from podd_lib.errors import PoddError
from podd_lib.kit.experiments import config_key
from podd_lib.validate import Positive, schema_fields

ROOT = Path(__file__).resolve().parents[2]
TOY = (Setting("toy_rate", Positive, 0.5, "the toy's step size"),)


@pytest.fixture
def toy(monkeypatch):
    """A toy algorithm with one setting, registered for the test only."""
    monkeypatch.setitem(registry.REGISTRY, "toy", TOY)


def test_a_registered_algorithm_is_a_choice_and_its_setting_a_schema_field(toy):
    assert schema_fields()["toy_rate"] is Positive
    cfg = resolve_config("cifar10", 1.0, "smoke", {"algorithm": "toy"})
    assert cfg.algorithm == "toy" and cfg.toy_rate == 0.5  # its default is in every resolved config
    assert resolve_config("cifar10", 1.0, "smoke", {"algorithm": "toy", "toy_rate": 2}).toy_rate == 2
    with pytest.raises(PoddError, match="toy_rate must be a positive number, got -1"):
        resolve_config("cifar10", 1.0, "smoke", {"algorithm": "toy", "toy_rate": -1})


def test_without_its_entry_the_algorithm_and_its_setting_are_unknown():
    with pytest.raises(PoddError, match="unknown algorithm 'toy'; choose one of ratbptt, mtt, dm, dc"):
        resolve_config("cifar10", 1.0, "smoke", {"algorithm": "toy"})
    with pytest.raises(PoddError, match="unknown config key.*toy_rate"):
        resolve_config("cifar10", 1.0, "smoke", {"toy_rate": 0.5})


def test_a_registered_setting_changes_only_its_own_algorithms_run_keys(monkeypatch):
    before = {a: config_key(resolve_config("cifar10", 1.0, "smoke", {"algorithm": a})) for a in ("ratbptt", "mtt")}
    monkeypatch.setitem(registry.REGISTRY, "toy", TOY)
    for algo, key in before.items():  # every earlier run keeps its key, whatever the toy's setting says
        cfg = resolve_config("cifar10", 1.0, "smoke", {"algorithm": algo})
        assert "toy_rate" in irrelevant_keys(cfg) and "toy_rate" in algorithm_defaults()
        assert config_key(cfg) == key == config_key(cfg.replace(toy_rate=9.0))
    toy = resolve_config("cifar10", 1.0, "smoke", {"algorithm": "toy"})
    assert "toy_rate" not in irrelevant_keys(toy)
    assert config_key(toy.replace(toy_rate=9.0)) != config_key(toy)  # read by the toy: hashed when not its default
    assert "syn_steps" in irrelevant_keys(toy) and "curriculum_draw" in irrelevant_keys(toy)


def test_a_setting_declared_twice_must_be_declared_alike(monkeypatch):
    monkeypatch.setitem(registry.REGISTRY, "toy", (Setting("real_per_class", Positive, 1.5, "another meaning"),))
    with pytest.raises(ValueError, match="real_per_class"):
        registry.declared_settings()


def test_every_registered_algorithm_has_a_module_with_from_config_and_every_setting_a_meaning():
    from podd_lib.algorithms import builder

    for name, settings in registry.REGISTRY.items():
        assert callable(builder(name)), name
        assert all(s.meaning and s.name.isidentifier() for s in settings), name
    with pytest.raises(PoddError, match="unknown algorithm 'nope'"):
        builder("nope")


def test_the_schema_and_the_registry_import_without_torch():
    code = ("import sys; import podd_lib.validate, podd_lib.config, podd_lib.algorithms; "
            "podd_lib.config.resolve_config('cifar10', 1.0, 'smoke', {'algorithm': 'mtt'}); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
