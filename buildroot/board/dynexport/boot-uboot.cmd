# dynexport: A/B root slot choice for RAUC's U-Boot backend (Pi 3/CM3, Zero 2 W).
# BOOT_ORDER lists the slots to try; BOOT_<slot>_LEFT counts the attempts left. Each boot
# spends one attempt; `rauc status mark-good` refills it, `rauc install` puts the new slot
# first. A slot whose attempts are spent is skipped: a new root that never commits falls
# back to the old one. A slot without a kernel (slot B of a card never updated) is skipped
# without spending an attempt. The firmware has already loaded the device tree (with
# config.txt's dtparam/dtoverlay applied) and put cmdline.txt in its /chosen/bootargs.
# Run in a real U-Boot (qemu_arm64) by tests/image/test_uboot_script.py.
test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 3

setenv slot
setenv left
setenv spent
for BOOT_SLOT in "${BOOT_ORDER}"; do
	if test -n "${slot}"; then
		true
	elif test "x${BOOT_SLOT}" = "xA"; then
		if test ${BOOT_A_LEFT} -le 0; then
			setenv spent A
		elif test -e mmc 0:1 a/Image; then
			setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
			setenv left ${BOOT_A_LEFT}
			setenv slot A
			setenv rootpart 2
			setenv prefix a/
		else
			echo "dynexport: root slot A has no kernel (a/Image); skipped"
		fi
	elif test "x${BOOT_SLOT}" = "xB"; then
		if test ${BOOT_B_LEFT} -le 0; then
			setenv spent B
		elif test -e mmc 0:1 b/Image; then
			setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
			setenv left ${BOOT_B_LEFT}
			setenv slot B
			setenv rootpart 3
			setenv prefix b/
		else
			echo "dynexport: root slot B has no kernel (b/Image); skipped"
		fi
	fi
done

if test -z "${slot}"; then
	if test -n "${spent}"; then
		echo "dynexport: no root slot has boot attempts left; resetting the counters"
		setenv BOOT_A_LEFT 3
		setenv BOOT_B_LEFT 3
		saveenv
	else
		# nothing to write: a card with no kernel at all must not wear its environment
		echo "dynexport: no root slot has a kernel; trying again in 5 s"
		sleep 5
	fi
	reset
fi
saveenv

fdt addr ${fdt_addr}
fdt get value fwargs /chosen bootargs
# The last root= wins: cmdline.txt names slot A, the chosen slot is appended, with the attempts it
# has left after this boot: dynexport tells a trial's repeated boot (one that hung before the
# service started) from its first by them (docs/update.md, "A trial reset before its commit").
setenv bootargs "${fwargs} root=PARTUUID=64796e78-0${rootpart} rauc.slot=${slot} dynexport.boot_left=${left}"
echo "dynexport: booting root slot ${slot} (${prefix}Image): ${bootargs}"
load mmc 0:1 ${kernel_addr_r} ${prefix}Image
booti ${kernel_addr_r} - ${fdt_addr}
echo "dynexport: could not boot ${prefix}Image"
reset
