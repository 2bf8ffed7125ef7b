#!/usr/bin/env python
"""The committed reference run comes back bit for bit: re-run it and compare with its record.

    python scripts/reference_run.py --data-root DATA           # check (exit 0 equal or skipped, 1 different)
    python scripts/reference_run.py --data-root DATA --write   # record it anew, after a deliberate change

The reference run is the smoke profile's 1-IPC CIFAR-10 poster at seed 0, distilled and evaluated
through the kit's run cache (kit.experiments.distill_and_evaluate), as every notebook's runs are.
Its record (tests/fixtures/reference_run.json) holds the SHA-256 of the poster and of the patch
labels, every evaluation network's accuracy, and what it was computed with. PyTorch's CPU results
are bitwise reproducible only at the same thread count on the same CPU model, so the check runs at
the recorded thread count and is skipped, saying why, on another CPU model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RECORD = REPO / "tests" / "fixtures" / "reference_run.json"
SETTING = {"dataset": "cifar10", "ipc": 1.0, "profile": "smoke", "overrides": {"seed": 0}}


def sha256(tensor) -> str:
    """SHA-256 of a tensor's bytes (contiguous, on the CPU)."""
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def fingerprint(data_root: str | None) -> dict:
    """Distil and evaluate the reference run in a temporary folder; its bits, accuracies and environment."""
    from podd_lib.kit.experiments import distill_and_evaluate
    from podd_lib.run import load_run

    with tempfile.TemporaryDirectory() as tmp:
        res = distill_and_evaluate(SETTING["dataset"], SETTING["ipc"], SETTING["profile"], tmp,
                                   SETTING["overrides"], data_root, device="cpu")
        run = load_run(res["run_dir"], data_root)
        return {"setting": SETTING, "poster_sha256": sha256(run["poster"]), "labels_sha256": sha256(run["y"]),
                "accuracies": res["eval"]["soft"]["by_step"][-1]["acc_pct"],
                "computed_on": {k: res["computed_on"][k] for k in ("cpu", "threads", "torch", "numpy", "python")}}


def compare(record: dict, now: dict) -> list[str]:
    """The fields of the run that differ from the record's (empty: bit for bit equal)."""
    return [k for k in ("poster_sha256", "labels_sha256", "accuracies") if record[k] != now[k]]


def main() -> int:
    """Check the reference run against its record, or (--write) record it."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=os.environ.get("PODD_DATA_ROOT"), help="CIFAR-10 root (default: ./data)")
    p.add_argument("--write", action="store_true", help="record the run anew instead of checking it")
    a = p.parse_args()

    import torch

    from podd_lib.determinism import cpu_model

    if a.write:
        from podd_lib.io import atomic_write_json

        now = fingerprint(a.data_root)
        atomic_write_json(RECORD, now)
        print(f"reference run: recorded in {RECORD.relative_to(REPO)} ({now['computed_on']})")
        return 0
    record = json.loads(RECORD.read_text())
    on = record["computed_on"]
    if cpu_model() != on["cpu"]:
        print(f"reference run: skipped, recorded on CPU {on['cpu']!r}, this machine has {cpu_model()!r}")
        return 0
    torch.set_num_threads(on["threads"])
    now = fingerprint(a.data_root)
    differ = compare(record, now)
    versions = f"torch {now['computed_on']['torch']} (recorded {on['torch']}), {on['threads']} threads, {on['cpu']}"
    if differ:
        print(f"reference run: DIFFERENT in {', '.join(differ)}: {now['accuracies']} vs recorded "
              f"{record['accuracies']}; {versions}")
        return 1
    print(f"reference run: bit for bit equal (poster {now['poster_sha256'][:12]}, accuracies {now['accuracies']}); "
          f"{versions}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
