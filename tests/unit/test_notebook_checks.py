"""The nbval settings in notebooks/conftest.py reach the cells nbval collects."""

import importlib.util
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def test_nbval_cells_wait_longer_for_their_outputs():
    pytest.importorskip("nbval")
    spec = importlib.util.spec_from_file_location("nb_conftest", NOTEBOOKS / "conftest.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)

    class Cell:  # what the hook reads of nbval's IPyNbCell
        output_timeout = 5

    class Other:
        pass

    cell, other = Cell(), Other()
    conf.pytest_collection_modifyitems([cell, other])
    assert cell.output_timeout == conf.OUTPUT_TIMEOUT_S > 5 and not hasattr(other, "output_timeout")
