#!/usr/bin/env bash
# The GPU check in one device call. Prepare once on this machine: scripts/make_gpu_subset.sh
# Then, with the device tool:  run(command="scripts/gpu_check.sh", carry=["gpu_data"], timeout_s=480)
# It runs benchmarks/gpu_check.py on the subset with a budget of GPU_CHECK_BUDGET_S (default 420 s,
# so a 15-minute device allowance leaves room for a rerun of one part: GPU_CHECK_PARTS=speed ...)
# and writes gpu_check.json, gpu_check.md and gpu_check.log into $OUT (or ./gpu_check_out).
# The device's stock Python is enough (benchmarks/device_packages.txt; CI runs the check under
# benchmarks/device_guard.py). The last line says each part ok / failed / skipped and the fidelity
# beside the paper's (benchmarks/gpu_summary.py); the exit status is the check's.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-gpu_check_out}"
mkdir -p "$out"
py="${PODD_PYTHON:-python3}"
for w in gpu_data/wheels/*.whl; do [ -f "$w" ] && export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)/$w"; done
data="${GPU_CHECK_DATA:-gpu_data/cifar10-subset.zip}"
extra=()
[ -n "${GPU_CHECK_PARTS:-}" ] && extra+=(--parts "$GPU_CHECK_PARTS")
[ -n "${GPU_CHECK_STEPS:-}" ] && extra+=(--fidelity-steps "$GPU_CHECK_STEPS")
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
  "$py" -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())"
  "$py" scripts/carried_size.py gpu_data
} 2>&1 | tee "$out/gpu_check.log"
CI=1 "$py" benchmarks/gpu_check.py --out "$out" --data-root "$data" --budget-s "${GPU_CHECK_BUDGET_S:-420}" \
    "${extra[@]}" "$@" 2>&1 | tee -a "$out/gpu_check.log"
status="${PIPESTATUS[0]}"
"$py" benchmarks/gpu_summary.py "$out/gpu_check.json" | tee -a "$out/gpu_check.log"
exit "$status"
