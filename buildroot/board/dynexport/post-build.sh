#!/bin/sh
# Buildroot post-build script: runs after the rootfs overlay is copied, before the root
# filesystem image is made. $1 = TARGET_DIR, $2 = board name (BR2_ROOTFS_POST_SCRIPT_ARGS).
set -eu

TARGET_DIR="$1"

# The data partition (label dynexport-data) is mounted here; see /etc/fstab.
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
