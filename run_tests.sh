#!/usr/bin/env bash
# The whole test suite, in three groups:
#   tests/unit/         the method and the kit, function by function, on small tensors (seconds)
#   tests/integration/  the real CLI, real CIFAR-10, run folders, resume, determinism, executors, the browser
#   notebooks/          every notebook executed under the smoke profile by nbval
#
#   ./run_tests.sh                # everything
#   ./run_tests.sh -k poster      # extra arguments go to the pytest run over tests/
#
# The environment comes from scripts/ensure_env.sh (a .venv in the repo, or $PODD_PYTHON).
# Real-data tests find CIFAR-10 through $PODD_CIFAR10_ROOT, or else the tests' conftest unpacks
# ../shared/data/cifar10-jpeg.zip; this script only passes the environment through.
# Exits non-zero when any step fails.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

PY="$(scripts/ensure_env.sh)" || { echo "run_tests: could not set up the environment" >&2; exit 2; }
# The venv's bin first, so `podd`, `jupyter` and `papermill` resolve to the kit's environment,
# and Jupyter prefers the venv's kernel spec `python3` over any user-level one.
export PATH="$(dirname "$PY"):$PATH"
export JUPYTER_PREFER_ENV_PATH=1

"$PY" - <<'PY'
import platform, sys
try:
    import torch
    dev = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    tv = f"torch {torch.__version__} ({dev})"
except Exception as exc:  # report, the tests will fail on their own
    tv = f"torch not importable: {exc}"
print(f"run_tests: python {platform.python_version()} ({sys.executable}); {tv}", flush=True)
PY

status=0

run_unit_tests() {
    echo "run_tests: pytest -q tests $*"
    "$PY" -m pytest -q tests "$@"
}

# Notebook checks: every notebook under notebooks/ is executed by nbval in the current environment
# with the smoke profile; --nbval-lax only compares outputs of cells marked with `# NBVAL_CHECK_OUTPUT`.
run_notebook_checks() {
    if ! compgen -G "notebooks/*.ipynb" >/dev/null; then
        echo "run_tests: no notebooks under notebooks/ yet; skipping the notebook checks"
        return 0
    fi
    local root
    root="$(scripts/shared_cifar10.sh)"
    echo "run_tests: nbval over notebooks/ (PODD_PROFILE=smoke, PODD_DATA_ROOT=$root)"
    PODD_PROFILE=smoke PODD_DATA_ROOT="$root" "$PY" -m pytest -q --nbval-lax --nbval-current-env notebooks/
}

run_unit_tests "$@" || status=1
run_notebook_checks || status=1

if [ "$status" -ne 0 ]; then
    echo "run_tests: FAILED" >&2
else
    echo "run_tests: all passed"
fi
exit "$status"
