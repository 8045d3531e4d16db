#!/usr/bin/env bash
# Build the dynexport SD card image for one board with Buildroot. Needs a networked Linux
# builder (Buildroot downloads every source), about 20 GB of disk and an hour or more.
# Usage: build-image.sh BOARD   (BOARD: rpi4_64, rpi3_64, rpizero2w_64, rpi5)
# Environment: DYNEXPORT_IMAGE_DIR (default: <project>/build/image) holds the Buildroot
# release, the download cache (dl/) and one output folder per board.
set -euo pipefail

BR_VERSION="2026.05.1"
BR_TARBALL="buildroot-${BR_VERSION}.tar.xz"
BR_URL="https://buildroot.org/downloads/${BR_TARBALL}"

EXT="$(cd "$(dirname "$0")/.." && pwd)"
PROJECT="$(cd "${EXT}/.." && pwd)"
HASH_FILE="${EXT}/scripts/${BR_TARBALL}.sha256"
WORK="${DYNEXPORT_IMAGE_DIR:-${PROJECT}/build/image}"

if [ $# -ne 1 ]; then
	boards=""
	for f in "${EXT}"/configs/dynexport_*_defconfig; do
		f="${f##*/dynexport_}"
		boards="${boards} ${f%_defconfig}"
	done
	echo "usage: $0 BOARD  (one of:${boards})" >&2
	exit 2
fi
BOARD="$1"
DEFCONFIG="dynexport_${BOARD}_defconfig"
if [ ! -f "${EXT}/configs/${DEFCONFIG}" ]; then
	echo "$0: unknown board '${BOARD}' (no configs/${DEFCONFIG})" >&2
	exit 2
fi
if [ "$(uname -s)" != Linux ]; then
	echo "$0: Buildroot needs a Linux builder" >&2
	exit 1
fi
# The pinned release is only ever used after its hash is checked.
if [ ! -s "${HASH_FILE}" ]; then
	echo "$0: ${HASH_FILE} is missing: refusing to use an unverified Buildroot" >&2
	exit 1
fi
expected="$(awk -v f="${BR_TARBALL}" '$2 == f { print $1 }' "${HASH_FILE}")"
if ! [[ "${expected}" =~ ^[0-9a-f]{64}$ ]]; then
	echo "$0: no sha256 for ${BR_TARBALL} in ${HASH_FILE}" >&2
	exit 1
fi

mkdir -p "${WORK}/dl"
BR_DIR="${WORK}/buildroot-${BR_VERSION}"
if [ ! -f "${BR_DIR}/Makefile" ]; then
	if [ ! -f "${WORK}/${BR_TARBALL}" ]; then
		echo ">>> downloading ${BR_URL}"
		curl -fL --retry 3 -o "${WORK}/${BR_TARBALL}.part" "${BR_URL}"
		mv "${WORK}/${BR_TARBALL}.part" "${WORK}/${BR_TARBALL}"
	fi
	actual="$(sha256sum "${WORK}/${BR_TARBALL}" | cut -d' ' -f1)"
	if [ "${actual}" != "${expected}" ]; then
		echo "$0: ${BR_TARBALL}: sha256 ${actual}, expected ${expected}; deleting it" >&2
		rm -f "${WORK}/${BR_TARBALL}"
		exit 1
	fi
	echo ">>> ${BR_TARBALL}: sha256 OK"
	rm -rf "${BR_DIR}.tmp"
	mkdir -p "${BR_DIR}.tmp"
	tar -xJf "${WORK}/${BR_TARBALL}" -C "${BR_DIR}.tmp" --strip-components=1
	mv "${BR_DIR}.tmp" "${BR_DIR}"
fi

OUT="${WORK}/output-${BOARD}"
export BR2_DL_DIR="${WORK}/dl"
# Bundle signing (docs/update.md): the image trusts DYNEXPORT_SIGNING_DIR/keyring.pem. Without a
# release key there, a development key is made (with a warning) so that the build still works.
SIGNING="${DYNEXPORT_SIGNING_DIR:-${PROJECT}/build/signing}"
"${EXT}/scripts/signing-key.sh" "${SIGNING}"
export DYNEXPORT_RAUC_KEYRING="${SIGNING}/keyring.pem"
make -C "${BR_DIR}" O="${OUT}" BR2_EXTERNAL="${EXT}" "${DEFCONFIG}"
make -C "${BR_DIR}" O="${OUT}"

IMAGE="${OUT}/images/sdcard.img"
if [ ! -f "${IMAGE}" ]; then
	echo "$0: the build finished without ${IMAGE}" >&2
	exit 1
fi
BUNDLE="$(DYNEXPORT_SIGNING_DIR="${SIGNING}" "${EXT}/scripts/build-bundle.sh" "${BOARD}")"
# What is downloaded and flashed: the image compressed (xz, as Raspberry Pi Imager reads it).
xz -T0 -6 -k -f "${IMAGE}"
echo
echo "SD card image for ${BOARD}: ${IMAGE}"
if [ -f "${IMAGE}.bmap" ]; then
	echo "Block map (for bmaptool copy): ${IMAGE}.bmap"
fi
echo "Update bundle (RAUC, signed): ${BUNDLE}"
"${EXT}/scripts/report-sizes.sh" "${BOARD}" "${IMAGE}.xz" "${BUNDLE}"
echo "Flashing: docs/image.md; updating: docs/update.md"
