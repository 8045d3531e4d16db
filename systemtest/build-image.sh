#!/usr/bin/env bash
# Assemble the system-test disk image: a small x86_64 Debian 12 system with the SAME
# rootfs-overlay, systemd units, post-build script, partition layout and dynexport install
# as the Buildroot image (docs/image.md, "System test"). Needs root, mmdebstrap, genimage,
# mksquashfs, mkfs.vfat/mtools, mke2fs, and the Debian and PyPI registries.
#
# Usage: systemtest/build-image.sh [OUT_DIR]   (default build/systemtest)
# Prints the path of the image folder (OUT_DIR/image-<hash>), which holds disk.img, vmlinuz,
# initrd.img and cmdline.txt. The folder is keyed by a hash of every input: a second run with
# unchanged inputs does nothing.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$(realpath -m "${1:-${repo}/build/systemtest}")"
mkdir -p "${out}"
cd "${repo}"

# Cache key: every file that goes into the image, plus this script and the layout.
inputs=(systemtest/build-image.sh systemtest/genimage-x86_64.cfg systemtest/image
	rootfs-overlay systemd src pyproject.toml buildroot/board/dynexport/post-build.sh)
key="$(find "${inputs[@]}" -type f -not -name '*.pyc' -not -path '*/__pycache__/*' -print0 |
	LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
dest="${out}/image-${key}"
if [ -f "${dest}/disk.img" ]; then
	echo "systemtest image up to date: ${dest}" >&2
	echo "${dest}"
	exit 0
fi

work="${out}/work-${key}"
rm -rf "${work}"
mkdir -p "${work}"
root="${work}/root"
trap 'rm -rf "${work}"' EXIT

# 1. dynexport and its pinned dependencies as wheels (the target runs CPython 3.11 too; the
#    binary wheels are manylinux, glibc <= 2.36 = Debian 12's).
echo "== wheels" >&2
python3 -m pip wheel -qq --disable-pip-version-check -w "${work}/wheels" . >&2

# 2. The Debian root file system. Debian's kernel (linux-image-amd64, which has the i6300esb
#    watchdog driver; the cloud kernel does not) stands in for the Pi's; the initramfs only
#    needs to find the squashfs root by PARTUUID, as the Pi's kernel does without one.
echo "== mmdebstrap" >&2
packages=(
	systemd systemd-sysv udev dbus systemd-resolved systemd-timesyncd
	linux-image-amd64 initramfs-tools zstd
	python3 tzdata e2fsprogs fdisk util-linux
	hostapd dnsmasq-base wpasupplicant iw
)
mmdebstrap --variant=minbase --quiet \
	--include="$(IFS=,; echo "${packages[*]}")" \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' \
	--setup-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks"' \
	--setup-hook="cp '${repo}/systemtest/image/initramfs.conf' \"\$1/etc/initramfs-tools/conf.d/systemtest.conf\"" \
	--setup-hook="install -m 0755 '${repo}/systemtest/image/initramfs-hook' \"\$1/etc/initramfs-tools/hooks/systemtest\"" \
	bookworm "${root}" >&2

# 3. dynexport itself, as Buildroot's python package does it: into site-packages, byte-compiled
#    (the root is read-only: no .pyc can be written at run time), with /usr/bin/dynexport.
echo "== dynexport" >&2
site="${root}/usr/local/lib/python3.11/dist-packages"
python3 -m pip install -qq --disable-pip-version-check --no-index \
	--find-links "${work}/wheels" --target "${site}" --no-compile dynexport >&2
rm -rf "${site}/bin"
cat >"${root}/usr/bin/dynexport" <<'EOF'
#!/usr/bin/python3
import sys

from dynexport.cli import main

sys.exit(main())
EOF
chmod 0755 "${root}/usr/bin/dynexport"
chroot "${root}" python3 -m compileall -q -j 2 /usr/local/lib/python3.11/dist-packages >/dev/null

# 4. The appliance's files, exactly as in the Buildroot image: the overlay, the unit, the user,
#    the post-build script, the presets.
echo "== overlay" >&2
cp -a rootfs-overlay/. "${root}/"
install -m 0644 systemd/dynexport.service "${root}/usr/lib/systemd/system/dynexport.service"
chroot "${root}" useradd --system --user-group --no-create-home --home-dir /nonexistent \
	--shell /usr/sbin/nologin dynexport
echo dynexport >"${root}/etc/hostname"
buildroot/board/dynexport/post-build.sh "${root}" x86_64
grep -E '^(enable|disable) ' rootfs-overlay/usr/lib/systemd/system-preset/20-dynexport.preset |
	while read -r verb unit; do
		systemctl --root="${root}" "${verb}" "${unit}" >/dev/null 2>&1 || true
	done
# Buildroot builds no getty and no login; Debian's would start one on the serial console.
systemctl --root="${root}" mask getty.target serial-getty@.service getty@.service \
	console-getty.service >/dev/null 2>&1
# Buildroot's /var factory: /var is a tmpfs filled from /usr/share/factory/var at boot.
mkdir -p "${root}/usr/share/factory"
mv "${root}/var" "${root}/usr/share/factory/var"
mkdir -p "${root}/var"
for entry in "${root}"/usr/share/factory/var/*; do
	echo "C! /var/${entry##*/} - - - -"
done >"${root}/usr/lib/tmpfiles.d/var-factory.conf"

# 5. Test instrumentation (this image only; documented in docs/image.md): a command agent on a
#    virtio serial port, which the harness uses to look inside (no network login exists).
install -D -m 0755 systemtest/image/agent "${root}/usr/local/libexec/systemtest-agent"
install -m 0644 systemtest/image/systemtest-agent.service "${root}/usr/lib/systemd/system/"
systemctl --root="${root}" enable systemtest-agent.service >/dev/null 2>&1

# Boot files: what the Pi's FAT partition holds (kernel, initramfs, cmdline.txt); qemu loads
# the kernel directly, as the Pi firmware does from the FAT partition.
boot="${work}/boot"
mkdir -p "${boot}"
cp "$(readlink -f "${root}/vmlinuz")" "${boot}/vmlinuz"
cp "$(readlink -f "${root}/initrd.img")" "${boot}/initrd.img"
install -m 0644 systemtest/image/cmdline.txt "${boot}/cmdline.txt"
rm -rf "${root}/boot"/* "${root}/vmlinuz"* "${root}/initrd.img"*
# Trim what a VM never loads (sound, GPU, media, wireless chipsets...): a smaller squashfs.
for d in sound drivers/gpu drivers/media drivers/infiniband drivers/net/wireless \
	drivers/staging drivers/iio drivers/isdn drivers/bluetooth net/wireless net/mac80211; do
	rm -rf "${root}"/usr/lib/modules/*/kernel/"${d}"
done
for kdir in "${root}"/usr/lib/modules/*; do
	chroot "${root}" depmod -a "${kdir##*/}"
done
rm -rf "${root}/var/cache/apt"/* "${root}/usr/share/factory/var/cache/apt"/* \
	"${root}/usr/share/factory/var/lib/apt/lists"/*

# 6. The card: same layout as the Pi's (genimage-x86_64.cfg mirrors genimage-rpi4_64.cfg).
echo "== squashfs + genimage" >&2
images="${work}/images"
mkdir -p "${images}"
mksquashfs "${root}" "${images}/rootfs.squashfs" -comp zstd -noappend -no-xattrs -quiet -no-progress >&2
cp "${boot}"/* "${images}/"
# An empty root path, as Buildroot's genimage.sh passes: the data partition starts empty.
mkdir -p "${work}/empty"
genimage --config systemtest/genimage-x86_64.cfg --rootpath "${work}/empty" \
	--inputpath "${images}" --outputpath "${images}" --tmppath "${work}/genimage-tmp" >/dev/null 2>"${work}/genimage.log" ||
	{ cat "${work}/genimage.log" >&2; exit 1; }

mkdir -p "${dest}.tmp"
mv "${images}/sdcard.img" "${dest}.tmp/disk.img"
cp "${boot}"/* "${dest}.tmp/"
rm -rf "${dest}"
mv "${dest}.tmp" "${dest}"
# Keep the cache small: older images go.
find "${out}" -maxdepth 1 -name 'image-*' -not -name "image-${key}" -exec rm -rf {} +
echo "${dest}"
