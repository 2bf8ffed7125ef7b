"""Shared fixtures: where the real CIFAR-10 copy lives for @pytest.mark.realdata tests."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

import pytest
import torch

from tests.helpers import CIFAR10_ZIP, download_cache, download_cifar10

# Test tensors are tiny: extra threads only add overhead (and, on a shared 2-core machine,
# oversubscription). PODD_NUM_THREADS overrides.
torch.set_num_threads(int(os.environ.get("PODD_NUM_THREADS", "1")))


def _has_cifar10(root: Path) -> bool:
    """True when root holds cifar10/{train,test}/<class>/ or torchvision's cifar10/cifar-10-batches-py/."""
    folder = root / "cifar10"
    return ((folder / "train").is_dir() and (folder / "test").is_dir()) or (folder / "cifar-10-batches-py").is_dir()


def _unpack(zip_path: Path, dest: Path) -> Path:
    """Extract the CIFAR-10 JPEG zip into dest (a few seconds for its 60k small files)."""
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(dest)
    if not _has_cifar10(dest):
        pytest.fail(f"{zip_path} did not contain cifar10/{{train,test}}/<class>/ images")
    return dest


def _scratch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh folder for the unpacked copy: in RAM (/dev/shm) when it has room, else pytest's temp dir.

    Creating and deleting 60k files on a disk mounted with online discard takes minutes; on tmpfs
    it takes a second or two.
    """
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * 1024**3:
            return Path(tempfile.mkdtemp(prefix="podd-cifar10root-", dir=shm))
    except OSError:
        pass
    return tmp_path_factory.mktemp("cifar10root")


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data root with CIFAR-10: $PODD_CIFAR10_ROOT, else the unpacked shared zip, else a download.

    A clone without ../shared (and without PODD_CIFAR10_ROOT) downloads CIFAR-10 once through the
    kit's loader into download_cache(); offline, the tests fail with one line saying what to set.

    The unpacked copy lives for the session and is removed at its end, so that its 60k files never
    land on a later pytest run's basetemp rotation (/tmp/pytest-of-<user> is shared by every run).
    """
    env = os.environ.get("PODD_CIFAR10_ROOT", "")
    if env:
        root = Path(env).expanduser()
        if not _has_cifar10(root):
            pytest.fail(f"PODD_CIFAR10_ROOT={env} has no cifar10/train and cifar10/test folders", pytrace=False)
        yield root
        return
    if not CIFAR10_ZIP.is_file():
        cache = download_cache()
        yield cache if _has_cifar10(cache) else download_cifar10(cache)
        return
    dest = _scratch_dir(tmp_path_factory)
    try:
        yield _unpack(CIFAR10_ZIP, dest)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    """Markers defined beside the tests that use them."""
    config.addinivalue_line("markers", "slurm: needs a running SLURM cluster and PODD_SLURM_TEST=1 (docs/slurm.md); "
                            "skipped otherwise")
