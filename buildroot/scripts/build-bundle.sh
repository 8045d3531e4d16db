#!/usr/bin/env bash
# Signs the root file system of a finished `make image BOARD=...` build as a RAUC bundle
# (docs/update.md): build/image/output-<board>/images/dynexport-<board>-<version>.raucb.
# Usage: build-bundle.sh BOARD
# Environment: DYNEXPORT_IMAGE_DIR (as build-image.sh); DYNEXPORT_SIGNING_DIR holds cert.pem and
# key.pem (default build/signing: a development key is made there, with a warning);
# DYNEXPORT_SIGNING_KEY overrides the key (a PKCS#11 URI for a key in a token or HSM);
# DYNEXPORT_BUNDLE_VERSION overrides the version (default: the package version + git commit).
set -euo pipefail

EXT="$(cd "$(dirname "$0")/.." && pwd)"
PROJECT="$(cd "${EXT}/.." && pwd)"
WORK="${DYNEXPORT_IMAGE_DIR:-${PROJECT}/build/image}"
SIGNING="${DYNEXPORT_SIGNING_DIR:-${PROJECT}/build/signing}"

if [ $# -ne 1 ]; then
	echo "usage: $0 BOARD" >&2
	exit 2
fi
BOARD="$1"
OUT="${WORK}/output-${BOARD}"
IMAGES="${OUT}/images"
RAUC="${OUT}/host/bin/rauc"
if [ ! -f "${IMAGES}/rootfs.squashfs" ] || [ ! -x "${RAUC}" ]; then
	echo "$0: no finished build for ${BOARD} in ${OUT}: run make image BOARD=${BOARD} first" >&2
	exit 1
fi
"${EXT}/scripts/signing-key.sh" "${SIGNING}"
KEY="${DYNEXPORT_SIGNING_KEY:-${SIGNING}/key.pem}"

version="$(sed -n 's/^DYNEXPORT_VERSION = //p' "${EXT}/package/dynexport/dynexport.mk")"
commit="$(git -C "${PROJECT}" rev-parse --short HEAD 2>/dev/null || echo unknown)"
VERSION="${DYNEXPORT_BUNDLE_VERSION:-${version}+${commit}}"

content="${OUT}/bundle-content"
rm -rf "${content}"
mkdir -p "${content}"
cp "${IMAGES}/rootfs.squashfs" "${content}/rootfs.img"
sed -e "s/@BOARD@/${BOARD}/g" -e "s/@VERSION@/${VERSION}/g" -e "s/@BUILD@/$(date -u +%Y%m%dT%H%M%SZ)/g" \
	"${EXT}/board/dynexport/rauc/manifest.raucm.in" >"${content}/manifest.raucm"
BUNDLE="${IMAGES}/dynexport-${BOARD}-${VERSION}.raucb"
rm -f "${BUNDLE}"
"${RAUC}" bundle --cert="${SIGNING}/cert.pem" --key="${KEY}" "${content}" "${BUNDLE}"
rm -rf "${content}"
if openssl x509 -in "${SIGNING}/cert.pem" -noout -subject | grep -q "NOT FOR FIELD USE"; then
	echo "WARNING: ${BUNDLE} is signed with the DEVELOPMENT key (docs/update.md)" >&2
fi
echo "${BUNDLE}"
