#!/usr/bin/env bash
# Write the CIFAR-10 subset that the GPU check carries to the device machine (its transfer is
# capped at 64 MiB beside the working tree; the full JPEG zip is 60.2 MiB, too close to rely on):
#   gpu_data/cifar10-subset.zip  = cifar10/test/<class>/*  (all 10,000 test images)
#                                + cifar10/train/<class>/* (the first N training images per class, default 2500)
# The JPEG files are copied byte for byte from the shared zip (no re-encoding), stored uncompressed.
# Also copies a tomli wheel into gpu_data/wheels when one can be fetched (pure Python; only needed
# when the device's python is older than 3.11, which lacks tomllib).
# Ends with the carried size (working tree + gpu_data, scripts/carried_size.py) and fails over 60 MiB.
# Usage: scripts/make_gpu_subset.sh [N_PER_CLASS] [SOURCE_ZIP]     (prints the file and its size)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
n="${1:-2500}"
src="${2:-../shared/data/cifar10-jpeg.zip}"
[ -f "$src" ] || src=/work/shared/data/cifar10-jpeg.zip
[ -f "$src" ] || { echo "make_gpu_subset: no source zip (give its path as the second argument)" >&2; exit 2; }
case "$n" in ''|*[!0-9]*) echo "make_gpu_subset: N_PER_CLASS must be a positive integer, got $n" >&2; exit 2;; esac
mkdir -p gpu_data
python3 - "$src" "$n" gpu_data/cifar10-subset.zip <<'PY'
import os, sys, zipfile
src, n, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tmp = dst + ".tmp"
kept = {"train": 0, "test": 0}
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zout:
    per_class = {}
    for info in sorted(zin.infolist(), key=lambda i: i.filename):
        parts = info.filename.split("/")
        if info.is_dir() or len(parts) != 4 or parts[0] != "cifar10" or parts[1] not in kept:
            continue
        if parts[1] == "train":
            k = per_class.get(parts[2], 0)
            if k >= n:
                continue
            per_class[parts[2]] = k + 1
        zout.writestr(info.filename, zin.read(info))
        kept[parts[1]] += 1
os.replace(tmp, dst)
size = os.path.getsize(dst)
print(f"{dst}: {kept['train']} train + {kept['test']} test images, {size / 2**20:.1f} MiB")
if size > 56 * 2**20:
    sys.exit("make_gpu_subset: the subset is over 56 MiB; use a smaller N_PER_CLASS")
PY
rm -rf gpu_data/wheels
python3 -m pip download --quiet --no-deps --only-binary=:all: --platform any --implementation py --python-version 3.10 \
    "tomli>=2.0" -d gpu_data/wheels >/dev/null 2>&1 \
    && echo "gpu_data/wheels: $(ls gpu_data/wheels)" || echo "make_gpu_subset: no tomli wheel fetched (fine on Python >= 3.11)"
python3 scripts/carried_size.py gpu_data
