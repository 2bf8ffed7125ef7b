#!/usr/bin/env bash
# Create (or reuse) the project's Python environment and print its python path on stdout.
#
#   PY=$(scripts/ensure_env.sh)      # everything else goes to stderr
#
# - If $PODD_PYTHON is set, that interpreter is used as is: nothing is installed.
# - Otherwise a venv at <repo>/.venv is created with `python3 -m venv` (Python >= 3.10;
#   set $PYTHON to pick another base interpreter), the exact versions of requirements.lock are
#   installed (scripts/lock.sh makes it; PODD_UNLOCKED=1 takes pyproject.toml's ranges instead, for
#   platforms the lock does not cover), then the kit itself with `pip install -e ".[dev]"`, and the
#   Jupyter kernel `python3` is registered inside the venv so that papermill / nbval (`-k python3`)
#   run notebooks with the venv's python.
# - A stamp (sha256 of pyproject.toml and requirements.lock) in .venv/.podd-stamp skips the install
#   when nothing changed, so a second call returns at once. Delete .venv to start over; a .venv
#   without a working python or pip (an interrupted first build) is rebuilt by the next call.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
STAMP="$VENV/.podd-stamp"

say() { echo "[ensure_env] $*" >&2; }
die() { echo "[ensure_env] ERROR: $*" >&2; exit 1; }

. "$REPO/scripts/venv_check.sh"  # py_ok, venv_problem

# ---------------------------------------------------------------- 1. user-supplied interpreter
if [ -n "${PODD_PYTHON:-}" ]; then
    PY="$(command -v "$PODD_PYTHON" || true)"
    [ -n "$PY" ] && [ -x "$PY" ] || die "PODD_PYTHON=$PODD_PYTHON is not an executable python"
    py_ok "$PY" || die "PODD_PYTHON=$PODD_PYTHON is not Python >= 3.10 ($("$PY" -V 2>&1))"
    say "using PODD_PYTHON ($("$PY" -V 2>&1)); nothing installed"
    echo "$PY"
    exit 0
fi

# ---------------------------------------------------------------- 2. the project venv
LOCKED="yes"; [ "${PODD_UNLOCKED:-}" = 1 ] && LOCKED="no"
STAMP_WANT="$(cd "$REPO" && cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)-locked-$LOCKED"
PY="$VENV/bin/python"
KERNEL_JSON="$VENV/share/jupyter/kernels/python3/kernel.json"

# A venv whose interpreter no longer runs (moved repo, removed base python) is rebuilt.
if [ -e "$VENV" ] && ! py_ok "$PY"; then
    say "existing .venv is broken or too old; recreating it"
    rm -rf "$VENV"
fi

# Fast path: stamp matches and the kernel points at this venv.
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_WANT" ] \
    && [ -f "$KERNEL_JSON" ] && grep -qF "\"$PY\"" "$KERNEL_JSON"; then
    echo "$PY"
    exit 0
fi

# A venv left broken by an interrupted first build (no pip) is rebuilt, not reported on every call.
PROBLEM="$(venv_problem "$VENV")"
if [ -n "$PROBLEM" ]; then
    say "existing .venv cannot be used ($PROBLEM); recreating it"
    rm -rf "$VENV"
fi

if [ ! -x "$PY" ]; then
    BASE="${PYTHON:-python3}"
    command -v "$BASE" >/dev/null 2>&1 \
        || die "no '$BASE' found on PATH: install Python >= 3.10 (or set PYTHON=/path/to/python3)"
    py_ok "$BASE" \
        || die "Python >= 3.10 is required, but '$BASE' is $("$BASE" -V 2>&1) (set PYTHON=/path/to/python3.10+)"
    say "creating .venv with $("$BASE" -V 2>&1) ($(command -v "$BASE"))"
    "$BASE" -m venv "$VENV" >&2 || die "'$BASE -m venv' failed (on Debian/Ubuntu: apt install python3-venv)"
fi

say "installing podd-kit and its dev tools into .venv (new venv or pyproject.toml changed; first time: a few minutes) ..."
# PyTorch's Linux wheels with their CUDA libraries take about 6 GB; say so before pip runs out of space.
FREE_MB=$(df -Pm "$REPO" | awk 'NR == 2 {print $4}')
if [ -n "$FREE_MB" ] && [ "$FREE_MB" -lt 8000 ]; then
    say "WARNING: only ${FREE_MB} MB free on $(df -P "$REPO" | awk 'NR == 2 {print $6}'); the environment needs about 8000 MB"
fi
start=$SECONDS
rm -f "$STAMP"
# `pip install -q` to stderr; warnings and errors stay visible, except pip's notice about
# configured file:// index locations that do not exist (machine-level pip config noise).
pip_install() {
    local rc=0
    (cd "$REPO" && "$PY" -m pip --disable-pip-version-check install -q --progress-bar off --no-cache-dir "$@") 2>&1 \
        | { grep -v -E "^WARNING: Location 'file:[^']*' is ignored: it is neither a file nor a directory\.$" || true; } >&2 \
        || rc=$?
    return "$rc"
}
# Editable installs from pyproject.toml (PEP 660) need pip >= 21.3; upgrade only when older.
pip_install "pip>=23" || die "could not upgrade pip inside .venv (see the pip error above)"
if [ "$LOCKED" = yes ]; then
    pip_install -r requirements.lock || die "pip install -r requirements.lock failed (see the pip error above; PODD_UNLOCKED=1 installs from pyproject.toml's ranges)"
    pip_install --no-deps -e ".[dev]" || die "pip install -e \".[dev]\" failed (see the pip error above)"
else
    say "PODD_UNLOCKED=1: installing from pyproject.toml's ranges, not requirements.lock"
    pip_install -e ".[dev]" || die "pip install -e \".[dev]\" failed (see the pip error above)"
fi

say "registering the Jupyter kernel 'python3' inside .venv"
"$PY" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (podd-kit)" >/dev/null \
    || die "ipykernel install failed"
grep -qF "\"$PY\"" "$KERNEL_JSON" || die "kernel spec $KERNEL_JSON does not point at $PY"

echo "$STAMP_WANT" > "$STAMP"
say "environment ready in $((SECONDS - start)) s"
echo "$PY"
