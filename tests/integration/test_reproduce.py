"""A fresh clone gives back the committed reference run bit for bit (on the CPU model it was recorded on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from podd_lib.determinism import cpu_model

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "reference_run.py"
RECORD = json.loads((REPO / "tests" / "fixtures" / "reference_run.json").read_text())


@pytest.mark.realdata
@pytest.mark.slow
def test_the_committed_reference_run_comes_back_bit_for_bit(cifar10_root):
    if cpu_model() != RECORD["computed_on"]["cpu"]:
        pytest.skip(f"recorded on CPU {RECORD['computed_on']['cpu']!r}, this machine has {cpu_model()!r}")
    res = subprocess.run([sys.executable, str(SCRIPT), "--data-root", str(cifar10_root)], capture_output=True,
                         text=True, timeout=900, env={**os.environ, "CI": "1", "PYTHONPATH": str(REPO)})
    assert res.returncode == 0 and "bit for bit equal" in res.stdout, res.stdout + res.stderr[-2000:]


def test_a_changed_record_is_reported_as_different():
    sys.path.insert(0, str(SCRIPT.parent))
    import reference_run

    changed = {**RECORD, "accuracies": [a + 1 for a in RECORD["accuracies"]]}
    assert reference_run.compare(RECORD, RECORD) == []
    assert reference_run.compare(changed, RECORD) == ["accuracies"]
