"""Run a Python script as the GPU device would: only the device image's packages can be imported.

    python benchmarks/device_guard.py benchmarks/gpu_check.py --tiny --device cpu --out OUT --data-root DATA
    python benchmarks/device_guard.py -c "import pydantic"     # fails: not in the device's image

A finder placed first on sys.meta_path looks up every top-level import. A module that lives in this
environment's site-packages and belongs to a distribution missing from benchmarks/device_packages.txt
raises ModuleNotFoundError, as it would on the device; the standard library and the repository's own
modules import as usual.
"""

from __future__ import annotations

import fnmatch
import importlib.machinery
import importlib.metadata
import re
import runpy
import site
import sys
from pathlib import Path

PACKAGES = Path(__file__).with_name("device_packages.txt")


def normalise(name: str) -> str:
    """A distribution name in its canonical form (PEP 503: lower case, runs of -_. as one -)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_allowed(path: Path = PACKAGES) -> list[str]:
    """The list's names (or name patterns), normalised; comments and blank lines skipped."""
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [normalise(line) for line in lines if line]


def site_dirs() -> list[str]:
    """The folders of installed packages (site-packages), resolved."""
    return [str(Path(d).resolve()) for d in site.getsitepackages() + [site.getusersitepackages()]]


class DeviceImageFinder:
    """Refuses top-level modules from site-packages whose distribution the device lacks."""

    def __init__(self, allowed: list[str]):
        self.allowed = allowed
        self.sites = site_dirs()
        self.owners = importlib.metadata.packages_distributions()  # top-level module -> distributions

    def permitted(self, dist: str) -> bool:
        """Whether a distribution is in the device's list."""
        return any(fnmatch.fnmatchcase(normalise(dist), pattern) for pattern in self.allowed)

    def find_spec(self, name: str, path=None, target=None):
        """None (let the usual finders import it), or ModuleNotFoundError for a module the device lacks."""
        if path is not None or "." in name:
            return None  # submodules follow their top-level package
        spec = importlib.machinery.PathFinder.find_spec(name)
        where = spec and (spec.origin or next(iter(spec.submodule_search_locations or []), None))
        if not where or where in ("built-in", "frozen"):
            return None
        location = str(Path(where).resolve())
        if not any(location.startswith(d + "/") for d in self.sites):
            return None  # the standard library or the repository
        dists = self.owners.get(name, [])
        if dists and any(self.permitted(d) for d in dists):
            return None
        raise ModuleNotFoundError(f"No module named '{name}' (the device's image lacks "
                                  f"{', '.join(dists) or 'its distribution'})", name=name)


def install(allowed: list[str] | None = None) -> DeviceImageFinder:
    """Put the finder first on sys.meta_path and return it."""
    finder = DeviceImageFinder(read_allowed() if allowed is None else allowed)
    sys.meta_path.insert(0, finder)
    return finder


def main(argv: list[str]) -> None:
    """`device_guard.py SCRIPT ARGS...` runs the script guarded; `device_guard.py -c CODE` runs code."""
    if not argv:
        raise SystemExit("usage: device_guard.py SCRIPT [ARGS...] | -c CODE")
    install()
    if argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        exec(compile(argv[1], "<device_guard -c>", "exec"), {"__name__": "__main__"})
        return
    sys.argv = list(argv)
    sys.path.insert(0, str(Path(argv[0]).resolve().parent))
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
