"""The test suite's own layout: shared builders live in tests/helpers.py, and no test module imports another."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def suite_module_names(root: Path) -> set[str]:
    """The names a test module or conftest under root can be imported by (file stems)."""
    return {p.stem for p in root.rglob("*.py")
            if p.name.startswith("test_") or p.name.endswith("_test.py") or p.name == "conftest.py"}


def imported_test_modules(source: str, names: set[str]) -> list[str]:
    """The imports in source (at any depth) that reach one of the test modules called names."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if set(a.name.split(".")) & names]
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            if set(parts) & names:
                found.append("." * node.level + (node.module or ""))
            elif node.level or parts[0] == "tests":
                found += [f"{'.' * node.level}{node.module or ''}:{a.name}" for a in node.names if a.name in names]
    return found


def test_the_checker_sees_every_way_of_importing_a_test_module():
    names = {"test_distill", "conftest"}
    for bad in ("from test_distill import ORDER", "import test_distill", "from tests.integration.test_distill import x",
                "from tests.integration import test_distill", "def f():\n    import conftest",
                "from . import conftest", "from .test_distill import fake_real", "from tests import conftest"):
        assert imported_test_modules(bad, names), bad
    for fine in ("from tests.helpers import ORDER, fake_real", "from tests import helpers", "import podd_lib.run",
                 "from podd_lib.config import resolve_config"):
        assert imported_test_modules(fine, names) == [], fine


def test_no_test_module_imports_another_test_module():
    names = suite_module_names(TESTS)
    assert {"test_distill", "conftest", "test_suite_layout"} <= names  # the walk finds the suite
    offenders = {str(p.relative_to(TESTS)): hits for p in sorted(TESTS.rglob("*.py"))
                 if (hits := imported_test_modules(p.read_text(encoding="utf-8"), names))}
    assert offenders == {}, f"move shared code into tests/helpers.py: {offenders}"


def test_shared_builders_live_in_the_helpers_module():
    import tests.helpers as helpers

    assert Path(helpers.__file__).resolve() == TESTS / "helpers.py"
    for name in ("ORDER", "fake_real", "tiny_cfg", "make_imagefolder", "small_meta_grad", "download_cifar10"):
        assert hasattr(helpers, name), name
