"""Packaging checks: environment.yml agrees with pyproject.toml, and the `podd` command resolves.

environment.yml is read with a deliberately tiny parser (no PyYAML dependency): it understands
just the subset the file uses -- top-level `key: value`, `key:` followed by `- item` lists, and
one nested `- pip:` list.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"
ENV_YML = REPO / "environment.yml"


# --------------------------------------------------------------------------- parsing helpers


def _strip_comment(line: str) -> str:
    """Drop a YAML comment: `#` at line start or after whitespace, outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def parse_environment_yml(text: str) -> dict:
    """Parse the small YAML subset used by environment.yml.

    Returns {"name": str, "channels": [...], "dependencies": [...], "pip": [...]}, where
    "dependencies" holds the conda entries and "pip" the entries of the nested `- pip:` list.
    """
    out: dict = {"name": None, "channels": [], "dependencies": [], "pip": []}
    section = None  # top-level key whose list we are reading
    pip_indent = None  # indentation of the `- pip:` item while inside its list
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        body = line.strip()
        if indent == 0:
            pip_indent = None
            key, sep, value = body.partition(":")
            if not sep:
                raise ValueError(f"environment.yml:{lineno}: expected 'key: value', got {raw!r}")
            key, value = key.strip(), value.strip()
            if value:
                out[key] = _unquote(value)
                section = None
            else:
                out.setdefault(key, [])
                section = key
            continue
        if not body.startswith("- ") and body != "-":
            raise ValueError(f"environment.yml:{lineno}: expected a '- item' line, got {raw!r}")
        item = _unquote(body[1:].strip())
        if pip_indent is not None and indent > pip_indent:
            out["pip"].append(item)
            continue
        pip_indent = None
        if section is None:
            raise ValueError(f"environment.yml:{lineno}: list item outside a section: {raw!r}")
        if section == "dependencies" and item == "pip:":
            pip_indent = indent
            continue
        out[section].append(item)
    return out


def _normalise(req_text: str) -> tuple[str, frozenset, str, str]:
    """(canonical name, specifiers, extras, marker) of a requirement string."""
    req = Requirement(req_text)
    specs = frozenset(str(s) for s in SpecifierSet(str(req.specifier)))
    return (
        canonicalize_name(req.name),
        specs,
        ",".join(sorted(canonicalize_name(e) for e in req.extras)),
        str(req.marker) if req.marker else "",
    )


def _pyproject() -> dict:
    with PYPROJECT.open("rb") as fh:
        return tomllib.load(fh)


def _env() -> dict:
    return parse_environment_yml(ENV_YML.read_text(encoding="utf-8"))


def _requirement_set(lines) -> dict:
    reqs = {}
    for line in lines:
        key = _normalise(line)
        assert key[0] not in reqs, f"{key[0]} listed twice"
        reqs[key[0]] = key
    return reqs


# --------------------------------------------------------------------------- the parser itself


def test_tiny_yaml_parser_understands_the_subset():
    text = (
        "# comment\n"
        "name: demo  # trailing comment\n"
        "channels:\n"
        "  - conda-forge\n"
        "dependencies:\n"
        "  - python>=3.10\n"
        "  - pip\n"
        "  - pip:\n"
        "      - torch>=2.2\n"
        "      - \"tomli>=2.0; python_version < '3.11'\"\n"
        "      - -e .\n"
        "  - numpy\n"
    )
    env = parse_environment_yml(text)
    assert env["name"] == "demo"
    assert env["channels"] == ["conda-forge"]
    assert env["dependencies"] == ["python>=3.10", "pip", "numpy"]
    assert env["pip"] == ["torch>=2.2", "tomli>=2.0; python_version < '3.11'", "-e ."]


def test_normalisation_ignores_spelling_but_not_versions():
    assert _normalise("Open_Clip.Torch >= 2.20") == _normalise("open-clip-torch>=2.20")
    assert _normalise("a>=1,<2") == _normalise("a<2, >=1")
    assert _normalise("a>=1") != _normalise("a>=1.1")
    assert _normalise("a>=1; python_version<'3.11'") != _normalise("a>=1")


# --------------------------------------------------------------------------- the real files


def test_environment_yml_header():
    env = _env()
    assert env["name"] == "podd-kit"
    assert env["channels"] == ["conda-forge"]
    conda = {_normalise(d)[0]: d for d in env["dependencies"]}
    assert "pip" in conda, "environment.yml must install pip (for its pip: section)"
    assert "python" in conda, "environment.yml must pin python"
    py_spec = SpecifierSet(str(Requirement(conda["python"]).specifier))
    requires = SpecifierSet(_pyproject()["project"]["requires-python"])
    assert py_spec == requires, (
        f"environment.yml python {py_spec} != pyproject requires-python {requires}"
    )


def test_environment_yml_matches_pyproject_requirements():
    project = _pyproject()["project"]
    expected_lines = list(project["dependencies"]) + list(
        project.get("optional-dependencies", {}).get("dev", [])
    )
    pip_lines = [p for p in _env()["pip"] if not p.startswith("-")]  # skip "-e ." and options
    expected = _requirement_set(expected_lines)
    actual = _requirement_set(pip_lines)

    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    differ = sorted(n for n in set(expected) & set(actual) if expected[n] != actual[n])
    problems = []
    if missing:
        problems.append(f"in pyproject but not environment.yml: {missing}")
    if extra:
        problems.append(f"in environment.yml but not pyproject: {extra}")
    for name in differ:
        problems.append(f"{name}: pyproject {expected[name]} vs environment.yml {actual[name]}")
    assert not problems, "requirement sets disagree:\n  " + "\n  ".join(problems)


# --------------------------------------------------------------------------- the `podd` command


def test_pyproject_console_script_target_is_importable():
    target = _pyproject()["project"]["scripts"]["podd"]
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attr)), f"{target} is not callable"


def _run(cmd):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_python_m_podd_lib_help():
    proc = _run([sys.executable, "-m", "podd_lib", "--help"])
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "podd" in (proc.stdout + proc.stderr).lower()


def _installed_entry_point():
    for ep in importlib.metadata.entry_points(group="console_scripts"):
        if ep.name == "podd":
            return ep
    return None


def test_podd_console_entry_point_resolves():
    try:
        importlib.metadata.distribution("podd-kit")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("podd-kit is not installed in this interpreter (./run_tests.sh installs it)")
    ep = _installed_entry_point()
    assert ep is not None, "podd-kit is installed but registers no `podd` console script"
    assert ep.value == _pyproject()["project"]["scripts"]["podd"]
    assert callable(ep.load())

    script = Path(sysconfig.get_path("scripts")) / ("podd.exe" if os.name == "nt" else "podd")
    if not script.exists():
        found = shutil.which("podd")
        assert found, f"`podd` script not found in {script.parent} nor on PATH"
        script = Path(found)
    proc = _run([str(script), "--help"])
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "podd" in (proc.stdout + proc.stderr).lower()
