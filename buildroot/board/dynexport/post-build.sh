#!/bin/sh
# Buildroot post-build script: runs after the rootfs overlay is copied, before the root
# filesystem image is made. $1 = TARGET_DIR, $2 = board name (BR2_ROOTFS_POST_SCRIPT_ARGS).
set -eu

TARGET_DIR="$1"
BOARD="${2:-}"
BOARD_DIR="$(dirname "$0")"

# The data partition (label dynexport-data) is mounted here by dynexport-data.service (mount-data).
mkdir -p "${TARGET_DIR}/data"

# machine-id on a read-only root: ship the file empty. At boot systemd finds it empty on a
# read-only file system, generates a random ID and mounts it over the file for this boot
# (the ID is not persisted: nothing on the appliance depends on it being stable; networkd
# uses the MAC address as DHCP client identifier, see /etc/systemd/network).
rm -f "${TARGET_DIR}/etc/machine-id"
: >"${TARGET_DIR}/etc/machine-id"
chmod 0444 "${TARGET_DIR}/etc/machine-id"

# Helpers are run by systemd units; files copied from the overlay keep their modes, but a
# checkout that lost them must not make a silently broken image.
chmod 0755 "${TARGET_DIR}"/usr/libexec/dynexport/*

# Files that hold or lead to secrets are readable by root only.
chmod 0700 "${TARGET_DIR}/etc/dynexport"

# Python bytecode at the service's level: its unit runs -OO (PYTHONOPTIMIZE=2, no docstrings:
# 1.5 MiB less resident; docs/decisions.md). Buildroot installs the sources only
# (BR2_PACKAGE_PYTHON3_PY_ONLY); here every module is compiled once, at level 2, as a sourceless
# foo.pyc (-b), and the sources are removed. Sourceless bytecode loads at any level, so the CLI
# runs the same files. The build's host python is the target's version (same magic number).
# PYTHONNODEBUGRANGES: no column tables, as the unit runs (smaller, quicker to load).
# Not for the system test's Debian root (board x86_64): build-image.sh does the same there with
# the root's own python3 (in a chroot), for its two trees (the stdlib and pip's dist-packages).
if [ "${BOARD}" != x86_64 ]; then
	for lib in "${TARGET_DIR}"/usr/lib/python3.*; do
		[ -d "${lib}" ] || continue
		PYTHONNODEBUGRANGES=1 "${HOST_DIR:?}/bin/python3" -m compileall -q -b -o 2 -s "${TARGET_DIR}" -p / "${lib}" >/dev/null
		find "${lib}" -name '*.py' -type f -delete
		find "${lib}" -name __pycache__ -type d -prune -exec rm -rf {} +
	done
fi

# A/B updates with RAUC (docs/image.md "A/B updates"). Pi 4/5: the firmware's trial boot;
# Pi 3/Zero 2 W: U-Boot with a boot counter. The system test image (x86_64) brings its own.
case "${BOARD}" in
rpi4_64 | rpi5) RAUC_BOOT=tryboot ;;
rpi3_64 | rpizero2w_64) RAUC_BOOT=uboot ;;
*) RAUC_BOOT="" ;;
esac
if [ -n "${RAUC_BOOT}" ]; then
	mkdir -p "${TARGET_DIR}/etc/rauc"
	sed "s/@BOARD@/${BOARD}/g" "${BOARD_DIR}/rauc/system-${RAUC_BOOT}.conf" \
		>"${TARGET_DIR}/etc/rauc/system.conf"
	if [ "${RAUC_BOOT}" = uboot ]; then
		install -m 0644 "${BOARD_DIR}/fw_env.config" "${TARGET_DIR}/etc/fw_env.config"
	fi
	# The keyring: the certificate(s) a bundle's signer must chain to. build-image.sh names it
	# (a development key unless DYNEXPORT_SIGNING_DIR holds the release certificate).
	if [ ! -s "${DYNEXPORT_RAUC_KEYRING:-}" ]; then
		echo "post-build.sh: DYNEXPORT_RAUC_KEYRING does not name a keyring (run make image)" >&2
		exit 1
	fi
	install -m 0644 "${DYNEXPORT_RAUC_KEYRING}" "${TARGET_DIR}/etc/rauc/keyring.pem"
	# Each root slot carries its own boot files in /boot; rauc-post-install copies them to the
	# slot's folder (a/ or b/) on the FAT partition when an update writes the slot.
	rm -rf "${TARGET_DIR:?}/boot"
	mkdir -p "${TARGET_DIR}/boot"
	cp "${BINARIES_DIR}/Image" "${TARGET_DIR}/boot/"
	if [ "${RAUC_BOOT}" = tryboot ]; then
		# the firmware loads DTBs, overlays and cmdline.txt from the slot's os_prefix folder
		cp "${BINARIES_DIR}"/*.dtb "${TARGET_DIR}/boot/"
		if [ -d "${BINARIES_DIR}/rpi-firmware/overlays" ]; then
			cp -r "${BINARIES_DIR}/rpi-firmware/overlays" "${TARGET_DIR}/boot/"
		fi
		cp "${BINARIES_DIR}/rpi-firmware/cmdline.txt" "${TARGET_DIR}/boot/cmdline.txt"
	fi
fi
