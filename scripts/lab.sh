#!/usr/bin/env bash
# Open the notebooks in JupyterLab with the kit's kernel.
#
#   scripts/lab.sh [--port N] [--profile smoke|quick|cpu-long|paper|paper-text] [other `jupyter lab` options]
#
# Creates or reuses .venv through scripts/ensure_env.sh, like ./run_all.sh and ./run_tests.sh,
# then serves the repository on 127.0.0.1 (first free port from 8888, or --port) with a fresh
# token, and prints the URL of notebooks/. Kernels start in notebooks/, so the notebooks read and
# write ../outputs: opened after `./run_all.sh`, they show its cached results at once.
# The profile is the notebooks' own default (quick) unless --profile or $PODD_PROFILE says
# otherwise; the data root is the one ./run_all.sh uses. Ctrl-C stops the server.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/user_paths.sh"  # relative data roots: from the folder typed in
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { echo "lab: $*" >&2; echo "(scripts/lab.sh --help for usage)" >&2; exit 2; }

PORT=""
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --port)      [ $# -ge 2 ] || die "--port needs a value"; PORT="$2"; shift 2 ;;
        --port=*)    PORT="${1#*=}"; shift ;;
        --profile)   [ $# -ge 2 ] || die "--profile needs a value"; export PODD_PROFILE="$2"; shift 2 ;;
        --profile=*) export PODD_PROFILE="${1#*=}"; shift ;;
        -h|--help)   sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *)           EXTRA+=("$1"); shift ;;
    esac
done
case "${PODD_PROFILE:-quick}" in
    smoke|quick|cpu-long|paper|paper-text) ;;
    *) die "--profile must be smoke, quick, cpu-long, paper or paper-text (got '${PODD_PROFILE}')" ;;
esac
[ -z "$PORT" ] || [[ "$PORT" =~ ^[0-9]+$ && "$PORT" -ge 1 && "$PORT" -le 65535 ]] \
    || die "--port must be a port number 1-65535 (got '$PORT')"

PY="$(scripts/ensure_env.sh)"
export PATH="$(dirname "$PY"):$PATH"
export JUPYTER_PREFER_ENV_PATH=1
export PODD_DATA_ROOT="$(scripts/shared_cifar10.sh)"

# The first free port from 8888 unless --port is given; a fresh token for this server.
read -r PORT TOKEN < <("$PY" - "${PORT:-}" <<'PY'
import secrets, socket, sys
want = sys.argv[1]
def free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
if want:
    port = int(want)
    if not free(port):
        sys.exit(f"lab: port {port} on 127.0.0.1 is in use; pick another with --port")
else:
    port = next((p for p in range(8888, 8988) if free(p)), 0)
print(port, secrets.token_hex(24))
PY
) || exit 2
[ "$PORT" != 0 ] || die "no free port in 8888-8987 on 127.0.0.1; pick one with --port"

[ "$(id -u)" != 0 ] || EXTRA+=(--allow-root)  # containers often run as root
URL="http://127.0.0.1:$PORT/lab/tree/notebooks?token=$TOKEN"
echo "lab: profile ${PODD_PROFILE:-quick} (the notebooks' default), data root $PODD_DATA_ROOT"
echo "lab: open $URL"
exec "$PY" -m jupyterlab --ip 127.0.0.1 --port "$PORT" --IdentityProvider.token="$TOKEN" \
    --ServerApp.root_dir="$(pwd)" --ServerApp.port_retries=0 ${EXTRA[@]+"${EXTRA[@]}"}
