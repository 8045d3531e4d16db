#!/usr/bin/env bash
# Makes a DEVELOPMENT bundle signing key in DIR (key.pem, cert.pem, keyring.pem) unless DIR
# already holds cert.pem and keyring.pem. A device whose keyring is this certificate accepts
# any bundle signed with this key: never ship it to a site (docs/update.md, "Signing keys").
# Usage: signing-key.sh DIR [COMMON_NAME]
set -euo pipefail

if [ $# -lt 1 ]; then
	echo "usage: $0 DIR [COMMON_NAME]" >&2
	exit 2
fi
DIR="$1"
CN="${2:-dynexport development bundle signing key - NOT FOR FIELD USE}"
if [ -s "${DIR}/cert.pem" ] && [ -s "${DIR}/keyring.pem" ]; then
	exit 0
fi
mkdir -p "${DIR}"
chmod 0700 "${DIR}"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
	-keyout "${DIR}/key.pem" -out "${DIR}/cert.pem" -days 3650 \
	-subj "/O=dynexport development/CN=${CN}" \
	-addext "basicConstraints=critical,CA:TRUE" \
	-addext "keyUsage=critical,digitalSignature,keyCertSign" 2>/dev/null
chmod 0600 "${DIR}/key.pem"
cp "${DIR}/cert.pem" "${DIR}/keyring.pem"
cat >&2 <<WARN
************************************************************************************
* WARNING: made a DEVELOPMENT signing key in ${DIR}.
* Images built now trust it, and anyone holding key.pem can update them.
* Never ship such an image to a site: docs/update.md, "Signing keys".
************************************************************************************
WARN
