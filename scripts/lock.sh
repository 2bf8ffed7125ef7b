#!/usr/bin/env bash
# Resolve requirements.lock, the exact versions every entry point installs (scripts/ensure_env.sh),
# from pyproject.toml's ranges with uv (https://docs.astral.sh/uv/). The lock is for CPython 3.11
# on Linux x86_64, the machines the kit's results and CI run on; elsewhere set PODD_UNLOCKED=1.
#
#   scripts/lock.sh              # after editing pyproject.toml: keep every locked version that still fits
#   scripts/lock.sh --upgrade    # move every package to the newest release pyproject.toml allows
#   scripts/lock.sh --upgrade-package torch   # move one package (and what it needs)
#
# uv comes from PATH, else it is installed into a throw-away folder with pip. Commit the new lock
# with the results it was checked against: a torch upgrade may change every number's last bits.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

UV="$(command -v uv || true)"
if [ -z "$UV" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    echo "lock: installing uv into $tmp" >&2
    python3 -m pip install -q --disable-pip-version-check --target "$tmp" uv >&2
    UV="$tmp/bin/uv"
fi
"$UV" pip compile pyproject.toml --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --no-header --quiet "$@" -o requirements.lock  # the old lock's versions are uv's preferences
{
    echo "# The exact versions the kit installs (scripts/ensure_env.sh), resolved from pyproject.toml by"
    echo "# scripts/lock.sh (uv pip compile, CPython 3.11, Linux x86_64). Do not edit: run scripts/lock.sh."
    grep -v '^# The exact versions\|^# scripts/lock.sh (uv' requirements.lock
} > requirements.lock.tmp
mv requirements.lock.tmp requirements.lock
echo "lock: requirements.lock holds $(grep -c '==' requirements.lock) pinned packages" >&2
