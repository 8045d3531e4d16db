#!/usr/bin/env bash
# Assemble the system-test disk image: a small x86_64 Debian 12 system with the SAME
# rootfs-overlay, systemd units, post-build script, partition layout and dynexport install
# as the Buildroot image (docs/image.md, "System test"), booted by GRUB with RAUC's GRUB
# backend standing in for the Pi's trial boot, and the signed update bundles the checks install.
# Needs root, mmdebstrap, genimage, mksquashfs, mkfs.vfat/mtools, mke2fs, rauc, openssl, and
# the Debian and PyPI registries.
#
# Usage: systemtest/build-image.sh [OUT_DIR]   (default build/systemtest)
# Prints the path of the image folder (OUT_DIR/image-<hash>), which holds disk.img and the
# bundles good.raucb, never-ready.raucb and foreign.raucb. The folder is keyed by a hash of
# every input: a second run with unchanged inputs does nothing. The Debian root (mmdebstrap,
# the slow part) is cached on its own, keyed by the package list and the initramfs files.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$(realpath -m "${1:-${repo}/build/systemtest}")"
mkdir -p "${out}"
cd "${repo}"

# Bundle signing keys for the test (development keys, made once per build folder): the image's
# keyring trusts "signing"; "signing-foreign" signs the bundle that must be refused.
buildroot/scripts/signing-key.sh "${out}/signing" \
	"dynexport system test bundle signing key - NOT FOR FIELD USE" 2>/dev/null
buildroot/scripts/signing-key.sh "${out}/signing-foreign" \
	"someone else's bundle signing key - NOT TRUSTED" 2>/dev/null

packages=(
	systemd systemd-sysv udev dbus systemd-resolved systemd-timesyncd
	linux-image-amd64/bookworm-backports initramfs-tools zstd
	python3 tzdata e2fsprogs fdisk util-linux
	hostapd dnsmasq-base wpasupplicant iw
	rauc rauc-service grub-pc-bin
)
debian_key="$(
	{
		printf '%s\n' "${packages[@]}"
		cat systemtest/image/initramfs.conf systemtest/image/initramfs-hook
		sed -n '/^# -- debian root begin/,/^# -- debian root end/p' systemtest/build-image.sh
	} | sha256sum | cut -c1-16
)"
debian_tar="${out}/debian-${debian_key}.tar"

# Cache key: every file that goes into the image, plus this script, the layout and the keys.
inputs=(systemtest/build-image.sh systemtest/genimage-x86_64.cfg systemtest/image
	rootfs-overlay systemd src pyproject.toml buildroot/board/dynexport/post-build.sh
	buildroot/board/dynexport/rauc/manifest.raucm.in
	"${out}/signing/cert.pem" "${out}/signing-foreign/cert.pem")
# Symbolic links count by name and target (the overlay masks units with links to /dev/null).
# Not setuptools' metadata (src/*.egg-info): make venv writes it, maybe while this runs.
key="$(
	{
		find "${inputs[@]}" -type f -not -name '*.pyc' -not -path '*/__pycache__/*' \
			-not -path '*.egg-info/*' -print0 |
			LC_ALL=C sort -z | xargs -0 sha256sum
		find "${inputs[@]}" -type l -printf '%p -> %l\n' | LC_ALL=C sort
	} | sed "s|${out}/||" | sha256sum | cut -c1-16
)"
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
#    Built from a copy of the project's files: setuptools writes its metadata into the source
#    tree, and .ci/run makes the Python environments (pip install -e .) while this runs.
echo "== wheels" >&2
mkdir -p "${work}/source"
cp -r pyproject.toml README.md LICENSE src "${work}/source/"
find "${work}/source/src" \( -name '__pycache__' -o -name '*.egg-info' \) -prune -exec rm -rf {} +
python3 -m pip wheel -qq --disable-pip-version-check -w "${work}/wheels" "${work}/source" >&2

# 2. The Debian root file system. Debian's kernel (linux-image-amd64, which has the i6300esb
#    watchdog driver and mac80211_hwsim; the cloud kernel has neither) stands in for the Pi's;
#    the initramfs only needs to find the squashfs root by PARTUUID, as the Pi's kernel does
#    without one. The kernel comes from bookworm-backports (6.12, the Pi kernel's series):
#    bookworm's 6.1 is XZ-compressed and its decompressor took 3.5 s more of every boot under
#    TCG than 6.12's ZSTD (docs/image.md "Boot to controlling"). RAUC (rauc, rauc-service: the
#    D-Bus service) as on the appliance; GRUB (grub-pc-bin) boots it.
# -- debian root begin
if [ ! -f "${debian_tar}" ]; then
	echo "== mmdebstrap" >&2
	mmdebstrap --variant=minbase --quiet \
		--include="$(IFS=,; echo "${packages[*]}")" \
		--dpkgopt='path-exclude=/usr/share/doc/*' \
		--dpkgopt='path-exclude=/usr/share/man/*' \
		--dpkgopt='path-exclude=/usr/share/locale/*' \
		--dpkgopt='path-exclude=/usr/share/info/*' \
		--setup-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks"' \
		--setup-hook='echo "deb http://deb.debian.org/debian bookworm-backports main" >"$1/etc/apt/sources.list.d/backports.list"' \
		--setup-hook="cp '${repo}/systemtest/image/initramfs.conf' \"\$1/etc/initramfs-tools/conf.d/systemtest.conf\"" \
		--setup-hook="install -m 0755 '${repo}/systemtest/image/initramfs-hook' \"\$1/etc/initramfs-tools/hooks/systemtest\"" \
		bookworm "${debian_tar%.tar}.tmp.tar" >&2
	mv "${debian_tar%.tar}.tmp.tar" "${debian_tar}"
	find "${out}" -maxdepth 1 -name 'debian-*.tar' -not -name "debian-${debian_key}.tar" -delete
fi
# -- debian root end
mkdir -p "${root}"
tar -C "${root}" -xpf "${debian_tar}"

# 3. dynexport itself, as Buildroot's python package does it: into site-packages, byte-compiled
#    (the root is read-only: no .pyc can be written at run time), with /usr/bin/dynexport.
echo "== dynexport" >&2
site="${root}/usr/local/lib/python3.11/dist-packages"
python3 -m pip install -qq --disable-pip-version-check --no-index \
	--find-links "${work}/wheels" --target "${site}" --no-compile dynexport >&2
rm -rf "${site:?}/bin"
cat >"${root}/usr/bin/dynexport" <<'PY'
#!/usr/bin/python3
import sys

from dynexport.cli import main

sys.exit(main())
PY
chmod 0755 "${root}/usr/bin/dynexport"
# As the Pi images (buildroot/board/dynexport/post-build.sh): every module compiled once, at the
# unit's level (PYTHONOPTIMIZE=2), as a sourceless foo.pyc, without column tables; the sources go.
chroot "${root}" env PYTHONNODEBUGRANGES=1 python3 -m compileall -q -j 2 -b -o 2 -x '/(test|tests|idlelib|tkinter|turtledemo|lib2to3)/' \
	/usr/local/lib/python3.11/dist-packages /usr/lib/python3.11 >/dev/null
for lib in "${root}/usr/local/lib/python3.11/dist-packages" "${root}/usr/lib/python3.11"; do
	find "${lib}" \( -type f -o -type l \) -name '*.py' -exec sh -c 'for f; do [ -e "${f}c" ] && rm "${f}"; done; true' sh {} +
	find "${lib}" -name __pycache__ -type d -prune -exec rm -rf {} +
done

# 4. The appliance's files, exactly as in the Buildroot image: the overlay, the unit, the user,
#    the post-build script, the presets.
echo "== overlay" >&2
cp -a rootfs-overlay/. "${root}/"
install -m 0644 systemd/dynexport.service "${root}/usr/lib/systemd/system/dynexport.service"
# The Pi images' fixed IDs (buildroot/package/dynexport/dynexport.mk, docs/image.md "Users and IDs").
chroot "${root}" groupadd --system --gid 70 dynexport
chroot "${root}" useradd --system --uid 70 --gid dynexport --no-create-home --home-dir /nonexistent \
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
# Debian's own maintenance units, which the Buildroot image does not have; its default target
# is graphical.target, Buildroot's multi-user.target (docs/image.md "Boot to controlling").
systemctl --root="${root}" mask apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
	e2scrub_all.timer e2scrub_reap.service fstrim.timer >/dev/null 2>&1
systemctl --root="${root}" set-default multi-user.target >/dev/null 2>&1

# 5. RAUC as on the appliance (docs/image.md "A/B updates"), with GRUB's backend: its own
#    system.conf (same slots, statusfile, keyring and post-install handler as the Pi's), the
#    test keyring, and the FAT partition on /bootfs (automounted when RAUC edits GRUB's
#    environment, unmounted when idle) instead of the Pi's firmware files.
mkdir -p "${root}/etc/rauc" "${root}/bootfs"
install -m 0644 systemtest/image/rauc-system.conf "${root}/etc/rauc/system.conf"
install -m 0644 "${out}/signing/keyring.pem" "${root}/etc/rauc/keyring.pem"
install -m 0644 systemtest/image/bootfs.mount systemtest/image/bootfs.automount \
	"${root}/usr/lib/systemd/system/"
systemctl --root="${root}" enable bootfs.automount >/dev/null 2>&1

# 6. Test instrumentation (this image only; documented in docs/image.md): a command agent on a
#    virtio serial port, which the harness uses to look inside (no network login exists).
install -D -m 0755 systemtest/image/agent "${root}/usr/local/libexec/systemtest-agent"
install -m 0644 systemtest/image/systemtest-agent.service "${root}/usr/lib/systemd/system/"
systemctl --root="${root}" enable systemtest-agent.service >/dev/null 2>&1

# Buildroot's /var factory: /var is a tmpfs filled from /usr/share/factory/var at boot.
mkdir -p "${root}/usr/share/factory"
mv "${root}/var" "${root}/usr/share/factory/var"
mkdir -p "${root}/var"
for entry in "${root}"/usr/share/factory/var/*; do
	echo "C! /var/${entry##*/} - - - -"
done >"${root}/usr/lib/tmpfiles.d/var-factory.conf"

# Kernel modules: only what this VM and the appliance's design use, with their dependencies,
# as the Pi's kernel carries only what its fragment selects. Debian's 4000 modules would have
# udev load dozens at every boot (kvm, ata_piix, cpufreq drivers...): seconds under TCG.
# mac80211_hwsim (test instrumentation, loaded only by the Wi-Fi check in run.py): two
# simulated radios, the setup access point's and a neighbour network's, for the Wi-Fi scan.
modules=(virtio_pci virtio_blk virtio_net virtio_console virtio_rng squashfs ext4 vfat
	nls_cp437 nls_ascii nls_utf8 nls_iso8859-1 crc32c_generic crc32c-intel loop dm_verity
	i6300esb autofs4 binfmt_misc mac80211_hwsim)
for kdir in "${root}"/usr/lib/modules/*; do
	kver="${kdir##*/}"
	# A name the kernel does not know stops the build here (set -e).
	for m in "${modules[@]}"; do
		chroot "${root}" modprobe -S "${kver}" --show-depends "${m}"
	done >"${work}/modules-deps"
	awk '$1 == "insmod" { print $2 }' "${work}/modules-deps" |
		sed -e 's|^/lib/modules/|/usr/lib/modules/|' -e "s|^|${root}|" | sort -u >"${work}/modules-keep"
	# Every module kept must be a file found below (a path that differs would delete them all);
	# those built into this kernel (6.12: virtio_pci, virtio_console) have no file.
	loadable=$((${#modules[@]} - $(grep -c '^builtin ' "${work}/modules-deps" || true)))
	find "${kdir}/kernel" -name '*.ko*' | sort >"${work}/modules-all"
	kept="$(comm -12 "${work}/modules-all" "${work}/modules-keep" | wc -l)"
	if [ "${kept}" -lt "${loadable}" ] || [ "${kept}" -ne "$(wc -l <"${work}/modules-keep")" ]; then
		echo "kernel modules: only ${kept} of $(wc -l <"${work}/modules-keep") found" >&2
		exit 1
	fi
	echo "kernel modules: keeping ${kept} of $(wc -l <"${work}/modules-all")" >&2
	comm -23 "${work}/modules-all" "${work}/modules-keep" | xargs rm -f
	find "${kdir}/kernel" -type d -empty -delete
	# Debian's 6.12 modules are XZ-compressed: unpacked once here rather than by every load
	# under TCG (and klibc's insmod in the initramfs reads only plain .ko files).
	find "${kdir}/kernel" -name '*.ko.xz' -exec xz -d {} +
	chroot "${root}" depmod -a "${kver}"
done

# 7. Boot files. As on the Pi, each root carries its own in /boot (here the kernel and its
#    initramfs); slot A's are copied to a/ on the FAT partition, rauc-post-install copies a new
#    root's to its folder. GRUB (core.img in the gap after the MBR, grub.cfg and its environment
#    in grub/ on the FAT partition) chooses the slot from RAUC's variables and loads
#    <slot>/vmlinuz, as the Pi firmware loads <slot>/ from config.txt's os_prefix.
echo "== boot files" >&2
images="${work}/images"
mkdir -p "${images}/a" "${images}/grub"
kernel="$(readlink -f "${root}/vmlinuz")"
initrd="$(readlink -f "${root}/initrd.img")"
rm -f "${root}/vmlinuz"* "${root}/initrd.img"*
mkdir -p "${work}/kernel"
mv "${kernel}" "${work}/kernel/vmlinuz"
# Debian's initramfs (initramfs-tools: udev, blkid, 15 MB) is replaced by a small one that only
# loads the virtio and squashfs modules and mounts the root by PARTUUID (systemtest/image/
# initramfs-init, mkinitramfs.py): 5 s less under TCG. The Pi boots without any. virtio_rng too:
# the VM's hardware RNG then seeds the kernel's CRNG before systemd asks for random bytes, as the
# Pi's built-in bcm2835-rng does (loaded later by udev, a warm reboot waited 8-30 s for jitter
# entropy before systemd went on: docs/image.md "Boot to controlling").
rm -f "${initrd}"
kver="${kernel##*/vmlinuz-}"
mapfile -t initramfs_modules < <(
	for m in virtio_pci virtio_blk squashfs virtio_rng; do
		chroot "${root}" modprobe -S "${kver}" --show-depends "${m}" | awk '$1 == "insmod" { print $2 }'
	done | awk '!seen[$0]++' | sed -e 's|^/lib/modules/|/usr/lib/modules/|' -e "s|^|${root}|"
)
python3 systemtest/image/mkinitramfs.py "${root}" systemtest/image/initramfs-init \
	"${work}/kernel/initrd.img" "${initramfs_modules[@]}"
echo "initramfs: $(stat -c %s "${work}/kernel/initrd.img") bytes, modules: ${initramfs_modules[*]##*/}" >&2
rm -rf "${root:?}/boot"/*
mv "${work}/kernel/vmlinuz" "${work}/kernel/initrd.img" "${root}/boot/"
cp "${root}/boot/vmlinuz" "${root}/boot/initrd.img" "${images}/a/"
cmdline="$(sed 's/root=PARTUUID=[^ ]* *//' systemtest/image/cmdline.txt | tr -d '\n')"
sed "s|@CMDLINE@|${cmdline}|" systemtest/image/grub.cfg >"${images}/grub/grub.cfg"
chroot "${root}" grub-editenv /tmp/grubenv create
chroot "${root}" grub-editenv /tmp/grubenv set ORDER="A B" A_OK=1 A_TRY=0 B_OK=0 B_TRY=0
mv "${root}/tmp/grubenv" "${images}/grub/grubenv"
chroot "${root}" grub-mkimage -O i386-pc -o /tmp/core.img -p '(hd0,msdos1)/grub' \
	biosdisk part_msdos fat normal linux16 loadenv test echo serial terminal
mv "${root}/tmp/core.img" "${work}/core.img"
cp "${root}/usr/lib/grub/i386-pc/boot.img" "${work}/boot.img"
# GRUB's own modules are not needed at run time (only grub-editenv, from grub-common).
rm -rf "${root}/usr/lib/grub/i386-pc"

rm -rf "${root}/var/cache/apt"/* "${root}/usr/share/factory/var/cache/apt"/* \
	"${root}/usr/share/factory/var/lib/apt/lists"/*

# 8. The card: same layout as the Pi's (genimage-x86_64.cfg mirrors genimage-rpi4_64.cfg).
echo "== squashfs + genimage" >&2
mksquashfs "${root}" "${images}/rootfs.squashfs" -comp zstd -noappend -no-xattrs -quiet -no-progress >&2
# An empty root path, as Buildroot's genimage.sh passes: the data partition starts empty.
mkdir -p "${work}/empty"
genimage --config systemtest/genimage-x86_64.cfg --rootpath "${work}/empty" \
	--inputpath "${images}" --outputpath "${images}" --tmppath "${work}/genimage-tmp" >/dev/null 2>"${work}/genimage.log" ||
	{ cat "${work}/genimage.log" >&2; exit 1; }
# GRUB's boot sector (its first 440 bytes: the disk signature and partition table stay) and
# core.img right after it, where boot.img's default points (sector 1; the 4 MiB before the
# first partition have room).
core_sectors=$(( ($(stat -c %s "${work}/core.img") + 511) / 512 ))
[ "${core_sectors}" -lt 8000 ] || { echo "core.img too big for the gap" >&2; exit 1; }
dd if="${work}/boot.img" of="${images}/sdcard.img" bs=440 count=1 conv=notrunc status=none
dd if="${work}/core.img" of="${images}/sdcard.img" bs=512 seek=1 conv=notrunc status=none

# 9. Update bundles, signed as make bundle signs them (manifest.raucm.in, verity format):
#    good: this same root as version <v>+systemtest.good;
#    never-ready: this root with a dynexport.service that starts but never reports READY;
#    foreign: the good root signed by a key the image does not trust.
echo "== bundles" >&2
version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)"
bundle() { # NAME VERSION SQUASHFS SIGNING_DIR
	local content="${work}/bundle-$1"
	mkdir -p "${content}"
	ln "$3" "${content}/rootfs.img" 2>/dev/null || cp "$3" "${content}/rootfs.img"
	sed -e "s/@BOARD@/systemtest/g" -e "s/@VERSION@/$2/g" -e "s/@BUILD@/${key}/g" \
		buildroot/board/dynexport/rauc/manifest.raucm.in >"${content}/manifest.raucm"
	rauc bundle --cert="$4/cert.pem" --key="$4/key.pem" --mksquashfs-args="-noI -noD -noF -noX" \
		"${content}" "${images}/$1.raucb" >/dev/null
	rm -rf "${content}"
}
bundle good "${version}+systemtest.good" "${images}/rootfs.squashfs" "${out}/signing"
bundle foreign "${version}+systemtest.foreign" "${images}/rootfs.squashfs" "${out}/signing-foreign"
mkdir -p "${root}/usr/lib/systemd/system/dynexport.service.d"
install -m 0644 systemtest/image/never-ready.conf \
	"${root}/usr/lib/systemd/system/dynexport.service.d/never-ready.conf"
mksquashfs "${root}" "${work}/never-ready.squashfs" -comp zstd -noappend -no-xattrs -quiet -no-progress >&2
bundle never-ready "${version}+systemtest.never-ready" "${work}/never-ready.squashfs" "${out}/signing"

mkdir -p "${dest}.tmp"
mv "${images}/sdcard.img" "${dest}.tmp/disk.img"
mv "${images}"/*.raucb "${dest}.tmp/"
rm -rf "${dest}"
mv "${dest}.tmp" "${dest}"
# Keep the cache small: older images go.
find "${out}" -maxdepth 1 -name 'image-*' -not -name "image-${key}" -exec rm -rf {} +
echo "${dest}"
