#!/usr/bin/env bash
# Prints the compressed image and bundle size of a board's build (make image), and warns when the
# compressed image passes its budget (DYNEXPORT_IMAGE_BUDGET_MB, default 60).
# Usage: report-sizes.sh BOARD IMAGE.xz BUNDLE.raucb
set -euo pipefail

if [ $# -ne 3 ]; then
	echo "usage: $0 BOARD IMAGE.xz BUNDLE.raucb" >&2
	exit 2
fi
BOARD="$1"
BUDGET_MB="${DYNEXPORT_IMAGE_BUDGET_MB:-60}"
mib() {
	awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.1f MiB", b / 1048576 }'
}
image_bytes="$(stat -c %s "$2")"
echo "sizes ${BOARD}: image (xz) $(mib "$2"), bundle $(mib "$3")"
if [ "${image_bytes}" -gt $((BUDGET_MB * 1048576)) ]; then
	echo "WARNING: ${BOARD}: the compressed image is over its ${BUDGET_MB} MiB budget" >&2
fi
