"""The notebooks stay narratives: a parameters cell first, at most 40 lines of code, checks only where deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("[0-9]*.ipynb"))


def code_cells(path: Path) -> list[str]:
    """The source of each code cell."""
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_at_most_40_lines_of_code(path):
    lines = sum(len(src.splitlines()) for src in code_cells(path))  # blank lines count too
    assert lines <= 40, f"{path.name}: {lines} lines of code; move logic into podd_lib/kit"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_with_a_papermill_parameters_cell(path):
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert "parameters" in cells[0].get("metadata", {}).get("tags", []), path.name
    assert "profile" in "".join(cells[0]["source"])


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 9
