#!/usr/bin/env bash
# Offline checks of the dynexport BR2_EXTERNAL tree against a Buildroot checkout:
#   1. every defconfig resolves with Buildroot's Kconfig: each symbol the defconfig sets keeps its
#      value in the resolved .config (nothing dropped), `savedefconfig` gives back exactly the
#      defconfig (nothing redundant), and the symbols the appliance needs are set;
#   2. every file of the external tree passes Buildroot's utils/check-package.
# Needs no network. check-package needs Python modules `magic` (python-magic) and `flake8`, and
# the `shellcheck` program; set CHECK_PACKAGE_PYTHON to a python that has the modules.
# Usage: image-check.sh BUILDROOT_DIR
set -euo pipefail

if [ $# -ne 1 ] || [ ! -f "$1/Makefile" ] || [ ! -x "$1/utils/check-package" ]; then
	echo "usage: $0 BUILDROOT_DIR  (a Buildroot source tree)" >&2
	exit 2
fi
BR="$(cd "$1" && pwd)"
EXT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/dynexport-image-check.XXXXXX")"
trap 'rm -rf "${WORK}"' EXIT

br_version="$(sed -n 's/^export BR2_VERSION := //p' "${BR}/Makefile")"
case "${br_version}" in
2026.05.*) ;;
*) echo "warning: Buildroot ${br_version}; the tree targets 2026.05.x" >&2 ;;
esac

# Symbols every appliance configuration must end up with.
REQUIRED="BR2_INIT_SYSTEMD=y BR2_TARGET_ROOTFS_SQUASHFS=y BR2_LINUX_KERNEL=y
BR2_PACKAGE_RPI_FIRMWARE=y BR2_PACKAGE_PYTHON3=y BR2_PACKAGE_PYTHON3_SSL=y
BR2_PACKAGE_DYNEXPORT=y BR2_PACKAGE_PYTHON_TRIO=y BR2_PACKAGE_PYTHON_H11=y
BR2_PACKAGE_PYTHON_LXML=y BR2_PACKAGE_PYTHON_PYMODBUS=y BR2_PACKAGE_PYTHON_CRYPTOGRAPHY=y
BR2_PACKAGE_PYTHON_SDNOTIFY=y BR2_PACKAGE_PYTHON_SERIAL=y BR2_PACKAGE_PYTHON_PYSUNSPEC2=y
BR2_PACKAGE_HOSTAPD=y BR2_PACKAGE_DNSMASQ=y BR2_PACKAGE_WPA_SUPPLICANT=y
BR2_PACKAGE_SYSTEMD_NETWORKD=y BR2_PACKAGE_SYSTEMD_TIMESYNCD=y BR2_PACKAGE_E2FSPROGS=y
BR2_PACKAGE_E2FSPROGS_RESIZE2FS=y BR2_PACKAGE_UTIL_LINUX_BINARIES=y BR2_PACKAGE_UTIL_LINUX_PARTX=y
BR2_PACKAGE_HOST_GENIMAGE=y BR2_PACKAGE_RAUC=y BR2_PACKAGE_RAUC_DBUS=y BR2_PACKAGE_RAUC_JSON=y
BR2_PACKAGE_HOST_RAUC=y BR2_TARGET_TZ_INFO=y"
# Symbols that must stay off: no root login, no SSH server, root not remounted read-write.
FORBIDDEN="BR2_TARGET_ENABLE_ROOT_LOGIN BR2_PACKAGE_DROPBEAR BR2_PACKAGE_OPENSSH
BR2_PACKAGE_OPENSSH_SERVER BR2_TARGET_GENERIC_REMOUNT_ROOTFS_RW BR2_TARGET_GENERIC_GETTY"

failures=0
fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}

n_defconfigs=0
for defconfig in "${EXT}"/configs/*_defconfig; do
	name="$(basename "${defconfig}")"
	out="${WORK}/${name%_defconfig}"
	n_defconfigs=$((n_defconfigs + 1))
	failures_before="${failures}"
	if ! make -s -C "${BR}" O="${out}" BR2_EXTERNAL="${EXT}" "${name}" >"${out}.log" 2>&1; then
		fail "${name}: make ${name} failed:"
		sed 's/^/    /' "${out}.log"
		continue
	fi
	config="${out}/.config"
	dropped=0
	while IFS= read -r line; do
		case "${line}" in
		"# "*" is not set")
			sym="${line#\# }"
			sym="${sym% is not set}"
			if grep -q "^${sym}=" "${config}"; then
				fail "${name}: dropped: ${line} (resolved: $(grep "^${sym}=" "${config}"))"
				dropped=$((dropped + 1))
			fi
			;;
		BR2_*=*)
			if ! grep -qxF -- "${line}" "${config}"; then
				sym="${line%%=*}"
				fail "${name}: dropped: ${line} (resolved: $(grep -E "^(# )?${sym}[= ]" "${config}" || echo absent))"
				dropped=$((dropped + 1))
			fi
			;;
		"" | "#"*) ;;
		*) fail "${name}: unexpected line: ${line}" ;;
		esac
	done <"${defconfig}"

	saved="${out}/saved_defconfig"
	if ! make -s -C "${BR}" O="${out}" BR2_DEFCONFIG="${saved}" savedefconfig >>"${out}.log" 2>&1; then
		fail "${name}: savedefconfig failed"
	elif ! diff -u <(grep -v '^$' "${defconfig}" | sort) <(sort "${saved}") >"${out}.diff"; then
		fail "${name}: savedefconfig differs from the defconfig (- only in the defconfig, + only in savedefconfig):"
		grep -E '^[-+][^-+]' "${out}.diff" | sed 's/^/    /'
	fi

	for want in ${REQUIRED}; do
		grep -qxF "${want}" "${config}" || fail "${name}: resolved .config lacks ${want}"
	done
	for sym in ${FORBIDDEN}; do
		if grep -q "^${sym}=" "${config}"; then
			fail "${name}: ${sym} must not be set"
		fi
	done
	if [ "${failures}" -eq "${failures_before}" ]; then
		echo "ok: ${name} resolves ($(grep -c '^BR2_' "${config}") symbols set, none dropped, savedefconfig identical)"
	fi
done

# check-package on every file of the external tree, run from the tree as its manual says.
CHECK_PACKAGE_PYTHON="${CHECK_PACKAGE_PYTHON:-python3}"
if ! "${CHECK_PACKAGE_PYTHON}" -c 'import magic, flake8' 2>/dev/null; then
	fail "check-package needs python-magic and flake8 for ${CHECK_PACKAGE_PYTHON} (set CHECK_PACKAGE_PYTHON)"
elif ! command -v shellcheck >/dev/null; then
	fail "check-package needs shellcheck in PATH"
else
	cd "${EXT}"
	mapfile -t files < <(find Config.in external.desc external.mk configs package board scripts \
		-type f | sort)
	if "${CHECK_PACKAGE_PYTHON}" "${BR}/utils/check-package" -b "${files[@]}" >"${WORK}/check-package.log" 2>&1; then
		echo "ok: check-package: ${#files[@]} files, $(tail -n 1 "${WORK}/check-package.log")"
	else
		fail "check-package:"
		sed 's/^/    /' "${WORK}/check-package.log"
	fi
fi

if [ "${failures}" -ne 0 ]; then
	echo "image-check: ${failures} failure(s)"
	exit 1
fi
echo "image-check: OK: ${n_defconfigs} defconfigs resolve against Buildroot ${br_version}; check-package clean"
