################################################################################
#
# dynexport
#
################################################################################

# Keep in sync with the version in pyproject.toml (tests/image checks it).
DYNEXPORT_VERSION = 0.1.0
DYNEXPORT_SITE = $(BR2_EXTERNAL_DYNEXPORT_PATH)/..
DYNEXPORT_SITE_METHOD = local
DYNEXPORT_SETUP_TYPE = setuptools
DYNEXPORT_LICENSE = MIT

# The project tree holds developer state (virtual environments, caches,
# build output) that the wheel build must neither see nor copy.
DYNEXPORT_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude /.venv --exclude '/.venv-*' --exclude /build \
	--exclude /dist --exclude /test-artifacts --exclude .mypy_cache \
	--exclude .ruff_cache --exclude .pytest_cache --exclude .hypothesis \
	--exclude __pycache__ --exclude '*.egg-info'

# The service runs unprivileged; dialout gives it the RS485 ports
# (ttyUSB*, ttyACM*, ttyAMA*). No password: the account cannot log in.
# A fixed UID and GID, 70 (board/dynexport/users.table says why and which range): its files on
# /data must keep their owner across A/B updates. The system test's image makes the same user
# (systemtest/build-image.sh).
define DYNEXPORT_USERS
	dynexport 70 dynexport 70 * - - dialout dynexport controller
endef

define DYNEXPORT_INSTALL_INIT_SYSTEMD
	for unit in $(@D)/systemd/*.service $(@D)/systemd/*.timer; do \
		[ -e "$${unit}" ] || continue; \
		$(INSTALL) -D -m 0644 "$${unit}" \
			$(TARGET_DIR)/usr/lib/systemd/system/$$(basename "$${unit}") \
			|| exit 1; \
	done
endef

$(eval $(python-package))
