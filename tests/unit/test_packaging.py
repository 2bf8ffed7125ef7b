"""Packaging checks: environment.yml, requirements.lock and pyproject.toml agree, and the `podd` command resolves.

environment.yml is read with a deliberately tiny parser (no PyYAML dependency): it understands
just the subset the file uses -- top-level `key: value`, `key:` followed by `- item` lists, and
one nested `- pip:` list.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
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


LOCK = REPO / "requirements.lock"


def _locked() -> dict[str, str]:
    """requirements.lock as {canonical name: exact version}."""
    pins = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            specs = list(req.specifier)
            assert len(specs) == 1 and specs[0].operator == "==", f"requirements.lock: {line!r} is not an exact pin"
            pins[canonicalize_name(req.name)] = specs[0].version
    return pins


def test_environment_yml_header():
    env = _env()
    assert env["name"] == "podd-kit"
    assert env["channels"] == ["conda-forge"]
    conda = {re.split(r"[=<>! ]", d, maxsplit=1)[0]: d for d in env["dependencies"]}
    assert "pip" in conda, "environment.yml must install pip (for its pip: section)"
    assert conda.get("python") == "python=3.11", "environment.yml must pin the lock's Python, 3.11"
    requires = SpecifierSet(_pyproject()["project"]["requires-python"])
    assert "3.11" in requires, f"pyproject requires-python {requires} excludes the lock's Python 3.11"


def test_environment_yml_installs_the_lock_and_the_kit():
    assert _env()["pip"] == ["-r requirements.lock", "-e ."]


def test_lock_pins_every_requirement_within_pyprojects_range():
    project = _pyproject()["project"]
    lines = list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("dev", []))
    pins = _locked()
    env = {"python_version": "3.11", "python_full_version": "3.11.7", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64"}
    problems = []
    for line in lines:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{name} is not in requirements.lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{name}=={pins[name]} is outside pyproject's {req.specifier}")
    assert not problems, "run scripts/lock.sh:\n  " + "\n  ".join(problems)
    assert "torch" in pins and "numpy" in pins


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


def venv_problem(venv: Path) -> str:
    """What scripts/venv_check.sh says of the venv at venv ('' when it is usable or absent)."""
    check = REPO / "scripts" / "venv_check.sh"
    p = subprocess.run(["bash", "-c", f'. "{check}"; venv_problem "$1"', "bash", str(venv)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_an_interrupted_first_environment_build_is_rebuilt_by_the_next_call(tmp_path):
    import sys

    assert venv_problem(tmp_path / "absent") == ""
    assert venv_problem(Path(sys.prefix)) == ""  # this very environment
    (tmp_path / "emptied").mkdir()
    assert "python is missing" in venv_problem(tmp_path / "emptied")
    repo = tmp_path / "repo"  # a copy of the scripts, and a .venv left without pip
    (repo / "scripts").mkdir(parents=True)
    for name in ("ensure_env.sh", "venv_check.sh"):
        shutil.copy(REPO / "scripts" / name, repo / "scripts" / name)
    for name in ("pyproject.toml", "requirements.lock"):
        (repo / name).write_text("")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(repo / ".venv")], check=True, timeout=120)
    assert "no pip" in venv_problem(repo / ".venv")
    base = tmp_path / "python3"  # a base python that answers the version check and cannot make venvs (no install)
    base.write_text(f'#!/usr/bin/env bash\ncase "${{1:-}}" in -c) exec {sys.executable} "$@" ;; -V) echo "Python 3";;'
                    f' *) exit 1 ;; esac\n')
    base.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PODD_PYTHON", "PODD_UNLOCKED")}
    p = subprocess.run(["bash", str(repo / "scripts" / "ensure_env.sh")], env={**env, "PYTHON": str(base)},
                       capture_output=True, text=True, timeout=120)
    lines = p.stderr.splitlines()
    assert lines[0] == ("[ensure_env] existing .venv cannot be used (it has no pip, as after an interrupted first "
                        "build); recreating it"), p.stderr
    assert not (repo / ".venv").exists() and "creating .venv" in lines[1]
