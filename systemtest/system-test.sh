#!/usr/bin/env bash
# make system-test: build (or reuse) the test image, then boot it and run the checks.
# Usage: systemtest/system-test.sh PYTHON   (a Python with dynexport installed: the simulators)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-.venv/bin/python}"
start=$(date +%s)
image="$(systemtest/build-image.sh build/systemtest)"
image_s=$(( $(date +%s) - start ))
echo "image ready in ${image_s} s: ${image}"
exec "${python}" systemtest/run.py "${image}" --work build/systemtest/run --image-build-s "${image_s}"
