#!/usr/bin/env bash
# Offline machines (CI, this workplace): make ../shared/data/cifar10-jpeg.zip available as the
# data root ./data (cifar10/{train,test}/<class>/*.jpg) unless PODD_DATA_ROOT is already set.
# Prints the data root to use. Users with internet need none of this: CIFAR downloads through
# torchvision into ./data.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -n "${PODD_DATA_ROOT:-}" ]; then echo "$PODD_DATA_ROOT"; exit 0; fi
zip=../shared/data/cifar10-jpeg.zip
if [ ! -d data/cifar10/train ] && [ -f "$zip" ]; then
    echo "shared_cifar10: unpacking $zip into ./data" >&2
    mkdir -p data
    python3 - "$zip" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall("data")
PY
fi
echo "$(pwd)/data"
