"""Each notebook's runs come from one function in kit.studies, which the notebook and the plan both call."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from podd_lib.kit import plan, studies

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
RUN_METHODS = {"distill", "tiling", "random_baseline", "full_baseline", "algorithm", "cross_arch"}


def notebook(num: str) -> Path:
    """The notebook with this number."""
    return next(NOTEBOOKS.glob(f"{num}_*.ipynb"))


def calls(path: Path) -> list[ast.Call]:
    """Every call in a notebook's code cells."""
    return [n for src in plan.code_cells(path) for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Call)]


@pytest.mark.parametrize("num", sorted(studies.NOTEBOOK_RUNS))
def test_the_notebook_calls_its_run_list_with_its_parameters_by_name(num):
    runs, path = studies.NOTEBOOK_RUNS[num], notebook(num)
    params = plan.notebook_params(path)
    found = [c for c in calls(path) if isinstance(c.func, ast.Attribute) and c.func.attr == runs.__name__]
    assert len(found) == 1, f"{path.name} should call studies.{runs.__name__} once"
    call = found[0]
    assert [ast.unparse(a) for a in call.args] == ["s"], f"{path.name}: pass the parameters by name"
    for k in call.keywords:  # name=name, with the parameters cell's value, as the plan passes it
        assert isinstance(k.value, ast.Name) and k.value.id == k.arg and k.arg in params, (path.name, k.arg)
    taken = set(list(inspect.signature(runs).parameters)[1:])
    assert {k.arg for k in call.keywords} == taken & set(params), path.name


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("[0-9]*.ipynb")), ids=lambda p: p.stem)
def test_a_notebook_makes_runs_only_through_its_run_list(path):
    direct = [ast.unparse(c) for c in calls(path) if isinstance(c.func, ast.Attribute)
              and isinstance(c.func.value, ast.Name) and c.func.value.id == "s" and c.func.attr in RUN_METHODS]
    assert not direct, f"{path.name} runs {direct} outside kit.studies.NOTEBOOK_RUNS: the plan would miss them"


def test_the_plan_passes_the_parameters_the_function_names_and_leaves_the_rest_to_its_defaults():
    seen = {}

    def runs(s, ipc: float = 1.0, run_full: bool = True) -> None:
        seen.update(s=s, ipc=ipc, run_full=run_full)

    plan.plan_notebook_runs("session", runs, {"ipc": 0.5, "profile": "smoke", "seeds": None})
    assert seen == {"s": "session", "ipc": 0.5, "run_full": True}


def test_the_plan_takes_the_dataset_a_notebook_fixes_from_its_setup_call():
    assert plan.fixed_dataset(notebook("04")) == "cifar10" and plan.fixed_dataset(notebook("09")) == "cifar10"
    assert plan.fixed_dataset(notebook("02")) is None and plan.fixed_dataset(notebook("00")) is None


def test_the_plan_records_what_the_notebooks_function_runs(monkeypatch):
    def runs(s, ipc: float = 9.0) -> list[dict]:
        return s.distill(ipc, tag="probe", seeds=[0]) + s.distill(ipc, tag="probe", seeds=[1])

    monkeypatch.setitem(studies.NOTEBOOK_RUNS, "00", runs)
    p = plan.build_plan("smoke", only="00", notebooks_dir=NOTEBOOKS, out_dir="../nonexistent-outputs")
    assert [(r["tag"], r["ipc"], r["overrides"]["seed"]) for r in p["runs"]] == [("probe", 1.0, 0), ("probe", 1.0, 1)]
