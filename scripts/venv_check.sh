# Sourced by scripts/ensure_env.sh: is an existing virtual environment usable?

# Exit 0 when "$1" is a Python >= 3.10.
py_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; }

# Print why the venv at "$1" cannot be used (nothing when it can, or when there is none): its python
# does not run (a moved repository, a removed base python) or it has no pip (an interrupted first build).
venv_problem() {
    local venv="$1"
    [ -e "$venv" ] || return 0
    if ! py_ok "$venv/bin/python"; then
        echo "its python is missing, does not run or is older than 3.10"
    elif ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        echo "it has no pip, as after an interrupted first build"
    fi
}
