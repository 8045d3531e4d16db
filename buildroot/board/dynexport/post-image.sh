#!/bin/sh
# Buildroot post-image script: assembles sdcard.img with genimage.
# $1 = BINARIES_DIR, $2 = board name (BR2_ROOTFS_POST_SCRIPT_ARGS).
set -eu

BINARIES_DIR="$1"
BOARD="$2"
BOARD_DIR="$(dirname "$0")"
GENIMAGE_CFG="${BOARD_DIR}/genimage-${BOARD}.cfg"
GENIMAGE_TMP="${BUILD_DIR}/genimage.tmp"

if [ ! -f "${GENIMAGE_CFG}" ]; then
	echo "post-image.sh: no ${GENIMAGE_CFG} for board '${BOARD}'" >&2
	exit 1
fi

# Slot A's boot folder on the FAT partition (a/): the root's /boot, with the slot named on the
# kernel command line (RAUC reads rauc.slot=). Slot B's folder is written by the first update.
rm -rf "${BINARIES_DIR}/a"
cp -r "${TARGET_DIR}/boot" "${BINARIES_DIR}/a"
if [ -f "${BINARIES_DIR}/a/cmdline.txt" ]; then
	sed -i 's/$/ rauc.slot=A/' "${BINARIES_DIR}/a/cmdline.txt"
fi

# genimage copies its root path to its temporary folder; the images it assembles here are
# made already (rootfs.squashfs) or are empty (data.ext4), so give it an empty one.
EMPTY_ROOT="$(mktemp -d)"
trap 'rm -rf "${EMPTY_ROOT}"' EXIT
rm -rf "${GENIMAGE_TMP}"

genimage \
	--rootpath "${EMPTY_ROOT}" \
	--tmppath "${GENIMAGE_TMP}" \
	--inputpath "${BINARIES_DIR}" \
	--outputpath "${BINARIES_DIR}" \
	--config "${GENIMAGE_CFG}"

# A block map lets bmaptool skip the unused parts of the card when flashing.
if command -v bmaptool >/dev/null 2>&1; then
	bmaptool create -o "${BINARIES_DIR}/sdcard.img.bmap" "${BINARIES_DIR}/sdcard.img"
fi
