#!/usr/bin/env bash
# The main job of the kit.
#
#   ./run_all.sh [--profile smoke|quick|paper|paper-text] [--only NAMES] [--datasets NAMES] [--force]
#
#   --profile   how much compute to spend: smoke (seconds), quick (default), paper (full runs, as the
#               authors' release runs them), paper-text (full runs, as the paper's text describes them)
#   --only      comma-separated notebook names to run (default: all)
#   --datasets  comma-separated datasets, e.g. cifar10,cifar100 (default: the profile's)
#   --force     recompute results even when cached outputs exist
#
# Each notebook in notebooks/ runs in order through papermill (kernel python3, cwd notebooks/),
# with the profile as a parameter; executed copies go to outputs/notebooks/, figures to
# outputs/figures/, tables to outputs/results/, and the report to outputs/report.md.
# Finished runs are cached by their resolved config (outputs/runs/), so a second call, or a call
# after an interruption, continues where it stopped; --force recomputes.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "run_all: $*" >&2; echo "(./run_all.sh --help for usage)" >&2; exit 2; }

PROFILE=quick
ONLY=""
DATASETS=""
FORCE=0

while [ $# -gt 0 ]; do
    case "$1" in
        --profile)    [ $# -ge 2 ] || die "--profile needs a value"; PROFILE="$2"; shift 2 ;;
        --profile=*)  PROFILE="${1#*=}"; shift ;;
        --only)       [ $# -ge 2 ] || die "--only needs a value"; ONLY="$2"; shift 2 ;;
        --only=*)     ONLY="${1#*=}"; shift ;;
        --datasets)   [ $# -ge 2 ] || die "--datasets needs a value"; DATASETS="$2"; shift 2 ;;
        --datasets=*) DATASETS="${1#*=}"; shift ;;
        --force)      FORCE=1; shift ;;
        -h|--help)    usage; exit 0 ;;
        *)            die "unknown option: $1" ;;
    esac
done

case "$PROFILE" in
    smoke|quick|paper|paper-text) ;;
    *) die "--profile must be smoke, quick, paper or paper-text (got '$PROFILE')" ;;
esac
export PODD_PROFILE="$PROFILE"

echo "run_all: profile=$PROFILE only=${ONLY:-all} datasets=${DATASETS:-profile default} force=$FORCE"

PY="$(scripts/ensure_env.sh)"
export PATH="$(dirname "$PY"):$PATH"
export JUPYTER_PREFER_ENV_PATH=1

ROOT="$(scripts/shared_cifar10.sh)"
mkdir -p outputs/notebooks
PARAMS=(-p profile "$PROFILE" -p data_root "$ROOT" -p out_dir ../outputs)
[ "$FORCE" -eq 1 ] && PARAMS+=(-p force True)
if [ -n "$DATASETS" ]; then
    PARAMS+=(-y "datasets: [$(echo "$DATASETS" | sed 's/,/, /g')]")
fi

for nb in notebooks/[0-9]*.ipynb; do
    name="$(basename "$nb" .ipynb)"
    if [ -n "$ONLY" ] && ! echo ",$ONLY," | grep -q ",$name,\|,${name%%_*},"; then
        continue
    fi
    out="outputs/notebooks/$name.ipynb"
    echo "run_all: === $name (profile $PROFILE) ==="
    start=$(date +%s)
    if ! papermill -k python3 --cwd notebooks --progress-bar "$nb" "$out" "${PARAMS[@]}"; then
        echo "run_all: FAILED in $name; the partial executed copy is $out" >&2
        "$PY" - "$out" <<'PY' >&2 || true
import json, sys
nb = json.load(open(sys.argv[1]))
for i, c in enumerate(nb["cells"]):
    for o in c.get("outputs", []):
        if o.get("output_type") == "error":
            print(f"run_all: failing cell {i}: {o.get('ename')}: {o.get('evalue')}")
            print("".join(c.get("source", ""))[:400])
            sys.exit(0)
PY
        exit 1
    fi
    echo "run_all: $name done in $(( $(date +%s) - start )) s"
done
echo "run_all: all notebooks done; report: outputs/report.md"
