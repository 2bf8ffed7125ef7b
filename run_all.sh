#!/usr/bin/env bash
# The main job of the kit: plan the notebooks' runs, compute the missing ones, render the notebooks.
#
#   ./run_all.sh [--profile smoke|quick|cpu-long|paper|paper-text] [--only NAMES] [--datasets NAMES] [--force] [--plan]
#                [--executor local|submitit-local|slurm] [--jobs N] [--slurm-config FILE]
#                [--partition P] [--gpus-per-run G] [--time-min M] [--array-parallelism A]
#                [--sbatch KEY=VALUE]... [--seconds-per-step S]
#
#   --profile      how much compute to spend: smoke (seconds), quick (default), cpu-long (quick at width
#                  128 with learned labels, where the poster beats the tiling), paper (full runs, as the
#                  authors' release runs them), paper-text (full runs, as the paper's text describes them)
#   --only         comma-separated notebook names or numbers, e.g. 02,03 (default: all); an error
#                  when it matches no notebook
#   --datasets     comma-separated datasets, e.g. cifar10,cifar100 (default: each notebook's)
#   --force        recompute every planned run even when its result is cached
#   --plan         print the plan (notebooks, runs, cached or not, estimated time) and write it to
#                  <out>/plan.json; compute nothing
#   --executor     where the runs are computed: local (this process, one after another; default),
#                  submitit-local (submitit's LocalExecutor: --jobs runs at a time, each in its own
#                  process with its own log), slurm (submitit's AutoExecutor on a SLURM cluster)
#   --jobs         runs at a time under submitit-local (default 1)
#   --slurm-config a TOML file with a [slurm] table (slurm.example.toml); the flags below override it
#   --partition, --gpus-per-run, --time-min, --array-parallelism, --sbatch KEY=VALUE: SLURM settings
#   --seconds-per-step  estimate with this outer-step time (e.g. one measured on your GPU)
#
# First the plan is printed, then one progress line per run (distillation and evaluation steps,
# elapsed, remaining) and a summary; a failed run never stops the others. Then each notebook in
# notebooks/ renders from the cached results through papermill (kernel python3, cwd notebooks/):
# a run that failed shows as a missing row. Executed notebooks go to outputs/notebooks/<profile>/
# (papermill's log of each beside it), figures to <out>/figures/, tables to <out>/results/, the
# report to <out>/report.md, where <out> is outputs/
# (outputs/smoke/ and outputs/cpu-long/ for those profiles). Job logs are
# under <out>/jobs/. Finished runs are cached by their resolved config (<out>/runs/), and both
# distillations and evaluations resume after an interruption: run the same command again.
# Exit status: 0 all good, 1 a run or a notebook failed, 2 bad input.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/scripts/user_paths.sh"  # relative data roots: from the folder typed in
CALLER_DIR="$PWD"
cd "$(dirname "${BASH_SOURCE[0]}")"

usage() { sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "run_all: $*" >&2; echo "(./run_all.sh --help for usage)" >&2; exit 2; }

PROFILE=quick
ONLY=""
DATASETS=""
FORCE=0
PLAN_ONLY=0
RUNNER_ARGS=()

need() { [ "$2" -ge 2 ] || die "$1 needs a value"; }
typed() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$CALLER_DIR" "$1" ;; esac; }  # a path as typed
while [ $# -gt 0 ]; do
    case "$1" in
        --profile)    need "$1" $#; PROFILE="$2"; shift 2 ;;
        --profile=*)  PROFILE="${1#*=}"; shift ;;
        --only)       need "$1" $#; ONLY="$2"; shift 2 ;;
        --only=*)     ONLY="${1#*=}"; shift ;;
        --datasets)   need "$1" $#; DATASETS="$2"; shift 2 ;;
        --datasets=*) DATASETS="${1#*=}"; shift ;;
        --force)      FORCE=1; shift ;;
        --plan)       PLAN_ONLY=1; shift ;;
        --slurm-config) need "$1" $#; RUNNER_ARGS+=("$1" "$(typed "$2")"); shift 2 ;;
        --slurm-config=*) RUNNER_ARGS+=(--slurm-config "$(typed "${1#*=}")"); shift ;;
        --executor|--jobs|--partition|--gpus-per-run|--time-min|--array-parallelism|--sbatch|--seconds-per-step)
                      need "$1" $#; RUNNER_ARGS+=("$1" "$2"); shift 2 ;;
        --executor=*|--jobs=*|--partition=*|--gpus-per-run=*|--time-min=*|--array-parallelism=*|--sbatch=*|--seconds-per-step=*)
                      RUNNER_ARGS+=("$1"); shift ;;
        -h|--help)    usage; exit 0 ;;
        *)            die "unknown option: $1" ;;
    esac
done

case "$PROFILE" in
    smoke|quick|cpu-long|paper|paper-text) ;;
    *) die "--profile must be smoke, quick, cpu-long, paper or paper-text (got '$PROFILE')" ;;
esac
export PODD_PROFILE="$PROFILE"

echo "run_all: profile=$PROFILE only=${ONLY:-all} datasets=${DATASETS:-per notebook} force=$FORCE ${RUNNER_ARGS[*]:-}"

PY="$(scripts/ensure_env.sh)"
export PATH="$(dirname "$PY"):$PATH"
export JUPYTER_PREFER_ENV_PATH=1

"$PY" -m podd_lib.kit probes | sed 's/^/run_all: /'
ROOT="$(scripts/shared_cifar10.sh)"
ARGS=(--profile "$PROFILE" --data-root "$ROOT")
[ -n "$ONLY" ] && ARGS+=(--only "$ONLY")
[ -n "$DATASETS" ] && ARGS+=(--datasets "$DATASETS")
[ "$FORCE" -eq 1 ] && ARGS+=(--force)
[ "$PLAN_ONLY" -eq 1 ] && ARGS+=(--plan)

set +e
"$PY" -m podd_lib.kit.runner "${ARGS[@]}" "${RUNNER_ARGS[@]}"
runs_status=$?
set -e
[ "$runs_status" -eq 2 ] && exit 2
[ "$PLAN_ONLY" -eq 1 ] && exit "$runs_status"
[ "$runs_status" -eq 130 ] && exit 130

OUT=outputs; case "$PROFILE" in smoke|cpu-long) OUT="outputs/$PROFILE" ;; esac
NBDIR="outputs/notebooks/$PROFILE"
mkdir -p "$NBDIR"
PARAMS=(-p profile "$PROFILE" -p data_root "$ROOT" -p out_dir ../outputs)
if [ -n "$DATASETS" ]; then
    PARAMS+=(-y "datasets: [$(echo "$DATASETS" | sed 's/,/, /g')]")
fi

# The runs are computed: the notebooks read them from the cache and compute nothing.
export PODD_RENDER_ONLY=1
started=$(date +%s)
failed=0
for nb in notebooks/[0-9]*.ipynb; do
    name="$(basename "$nb" .ipynb)"
    if [ -n "$ONLY" ] && ! echo ",$ONLY," | grep -q ",$name,\|,${name%%_*},"; then
        continue
    fi
    out="$NBDIR/$name.ipynb"
    log="$NBDIR/$name.log"
    start=$(date +%s)
    if papermill -k python3 --cwd notebooks --no-progress-bar "$nb" "$out" "${PARAMS[@]}" >"$log" 2>&1; then
        echo "run_all: notebook $name rendered in $(( $(date +%s) - start )) s -> $out"
    else
        failed=1
        "$PY" - "$out" "$name" "$log" <<'PY' >&2 || echo "run_all: FAILED notebook $name (see $log)" >&2
import json, sys
out, name, log = sys.argv[1:4]
where = "before its first cell"
try:
    cells = json.load(open(out))["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    for i, c in enumerate(code, 1):
        for o in c.get("outputs", []):
            if o.get("output_type") == "error":
                where = f"code cell {i}: {o.get('ename')}: {o.get('evalue', '').splitlines()[0] if o.get('evalue') else ''}"
                raise StopIteration
except StopIteration:
    pass
except (OSError, ValueError):
    pass
print(f"run_all: FAILED notebook {name}, {where} (papermill's traceback: {log})")
PY
    fi
done

report="$OUT/report.md"
if [ -f "$report" ] && [ "$(stat -c %Y "$report")" -ge "$started" ]; then
    last="run_all: report: $report"
else
    last="run_all: no report written by this call (99_report did not run or failed)"
fi
if [ "$runs_status" -ne 0 ] || [ "$failed" -ne 0 ]; then
    echo "run_all: finished with failures (runs: exit $runs_status; notebooks: $([ "$failed" -eq 0 ] && echo ok || echo failed))" >&2
    echo "$last"
    exit 1
fi
echo "$last"
