#!/usr/bin/env bash
# Downloads the wheels the GPU machine lacks (bench/gpu/device-requirements.txt), a slimmed bitsandbytes
# (QLoRA) and builds the project's own wheel, into one folder that travels with the working tree
# (default .whl/, git-ignored).
# Why: the GPU machine has PyTorch but no network; everything else must arrive as wheels, 64 MiB at most.
# Usage: bench/gpu/fetch_wheels.sh [DEST] [PYTHON_VERSION]
#   DEST            wheel folder (default .whl)
#   PYTHON_VERSION  target interpreter (default 3.12, the GPU machine's)
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${1:-.whl}
PYVER=${2:-3.12}
PY=${PY:-.venv/bin/python}
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mapfile -t reqs < <(grep -vE '^\s*(#|$)' bench/gpu/device-requirements.txt)
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${reqs[@]}" 2> >(grep -v "^WARNING: Location" >&2)
# bitsandbytes ships one native library per CUDA release (43 MB); keep those the device can load.
BNB_TMP=$(mktemp -d)
trap 'rm -rf "$BNB_TMP"' EXIT
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  "${PLATFORMS[@]}" -d "$BNB_TMP" "bitsandbytes==0.50.2" 2> >(grep -v "^WARNING: Location" >&2)
"$PY" bench/gpu/slim_bnb.py "$BNB_TMP"/bitsandbytes-*.whl "$DEST"
# The project itself: a wheel carries qwenvl_roi_plugin.pth, which an editable checkout does not.
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$DEST" . 2> >(grep -v "^WARNING: Location" >&2)
size_kib=$(du -sk "$DEST" | cut -f1)
echo "wheels in $DEST: $(ls "$DEST" | wc -l) files, $((size_kib / 1024)) MiB"
if (( size_kib > 40 * 1024 )); then
  echo "ERROR: $DEST is over 40 MiB; the device call carries at most 64 MiB with the working tree" >&2
  exit 1
fi
