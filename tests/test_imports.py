"""What ``dynexport run`` loads: the service's memory is mostly the modules it imports.

Each check runs in a fresh interpreter (a subprocess), because this test process has imported
everything already. These are structural checks on ``sys.modules``, not timings: the service's
path (the ``run`` command, the app, the web server and API, the utility link with its TLS
context and LFDI, the integrations) must not pull in ``cryptography`` (10 MiB: keys, CSRs and
chain checks are setup tools), the simulators, the demo, the XSD validator, ``paho``, or the
standard library's heavier corners that only setup or rare paths need (``importlib.metadata``,
``importlib.resources`` and ``zipfile``, ``email`` for an HTTP-date, ``html``'s entity table,
``csv``), nor the modules of features a typical site does not use (MQTT, the price source, the
update URL, the setup wizard's device scan, Wi-Fi page and bundle upload).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dynexport.sep2 import certs

# prefixes of modules the running service must not import
NOT_AT_RUNTIME: tuple[str, ...] = (
    "cryptography",
    "paho",
    "sunspec2",
    "dynexport.sep2.certs",
    "dynexport.sep2.cert_cli",
    "dynexport.sep2.schema",
    "dynexport.sim",
    "dynexport.demo",
    "dynexport.demo_cli",
    "importlib.metadata",
    "importlib.resources",
    "zipfile",
    "email",
    "html.entities",
    "csv",
    "serial",  # pyserial: only a site with an RS485 device opens a port (modbus/client.py)
)
LAZY = (
    # features a typical site does not use, imported when used (tests/test_lazy_imports.py)
    "paho",
    "dynexport.integrations.mqtt",
    "dynexport.integrations.amber",
    "dynexport.integrations.homeassistant",
    "dynexport.integrations.topics",
    "dynexport.update.install",
    "dynexport.update.cli",
    "dynexport.update.check",
    "dynexport.web.wifi",
    "dynexport.web.updates",
    "dynexport.sunspec.cli",
    "importlib.resources",
    # a str host goes through the idna codec even for an address: the web server, the HTTP
    # client and the Modbus TCP client pass ASCII hosts as bytes (httpio/names.py)
    "encodings.idna",
    "stringprep",
)
NOT_AT_RUNTIME += LAZY

# what the service imports as it starts: the run command, the app, the web server it starts
SERVICE_START = """
import json, sys
from dynexport.cli import build_parser
build_parser(["run", "--config", "config.json"])
import dynexport.app, dynexport.app_cli, dynexport.web.server, dynexport.web.api
"""

# the runtime calls that used to load cryptography: the utility link's TLS context and LFDI
UTILITY_LINK = """
import trio
from dynexport.app import App, AppOptions
from dynexport.integrations.service import Integrations
from dynexport.sep2.client import Sep2Client
from dynexport.sep2.identity import device_lfdi
from dynexport.system.config import load_config
config = load_config(sys.argv[1])
client = Sep2Client(config.utility, sys.argv[2])
assert client.lfdi == device_lfdi(config.utility.cert)
app = App(config, AppOptions(data_dir=__import__("pathlib").Path(sys.argv[2])))
Integrations(lambda: config, app.status)
from dynexport.sunspec.models import model_def
assert model_def(1) is not None and model_def(103) is not None  # read from pysunspec2's JSON
"""

REPORT = """
print(json.dumps({"lfdi": globals().get("client") and client.lfdi, "modules": sorted(sys.modules)}))
"""


def run_fresh(code: str, *args: str, flags: tuple[str, ...] = ()) -> dict[str, Any]:
    """Runs ``code`` in a fresh interpreter (with interpreter ``flags``, e.g. ``-OO`` as the
    service's unit runs it); its last line of output is a JSON report."""
    result = subprocess.run(
        [sys.executable, *flags, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def _offending(modules: object) -> list[str]:
    assert isinstance(modules, list)
    return [m for m in modules if m.startswith(NOT_AT_RUNTIME)]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A configuration with a utility link whose files are a real test PKI; its device LFDI."""
    folder = tmp_path_factory.mktemp("site")
    pki = certs.make_test_pki(folder / "pki", now=dt.datetime.now(dt.UTC))
    config = {
        "inverters": [{"tcp": "127.0.0.1:1", "unit": 1}],
        "meter": {"tcp": "127.0.0.1:1", "unit": 240},
        "utility": {
            "server": "https://127.0.0.1:1",
            "ca": str(pki.files["serca"]),
            "cert": str(pki.files["device_chain"]),
            "key": str(pki.files["device_key"]),
            "nmi": "4312345678",
            "pin": 111115,
        },
    }
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    (folder / "data").mkdir()
    return path, pki.device_lfdi


def test_starting_the_service_imports_no_setup_tool_simulator_or_demo() -> None:
    report = run_fresh(SERVICE_START + REPORT)
    modules = report["modules"]
    assert isinstance(modules, list)
    assert _offending(modules) == []
    assert "dynexport.web.api" in modules  # the check saw the service's modules


# What waits for the first limits (app.py, docs/architecture.md "Start order"): the utility link's
# XML stack, the web server, the HTTP layer and the update tasks are imported once the first limits
# are written, so the controller's start at boot does not wait for them.
CONTROLLER_START = """
import json, sys
from dynexport.cli import build_parser
build_parser(["run", "--config", "config.json"])
import dynexport.app, dynexport.app_cli
"""
XML_STACK = (
    "lxml",
    "dynexport.sep2.client",
    "dynexport.sep2.flow",
    "dynexport.sep2.resources",
    "dynexport.sep2.xml",
)
AFTER_FIRST_LIMITS = (*XML_STACK, "h11", "dynexport.httpio", "dynexport.web", "dynexport.update")


def test_the_controller_starts_without_what_waits_for_the_first_limits() -> None:
    modules = run_fresh(CONTROLLER_START + REPORT)["modules"]
    assert isinstance(modules, list)
    assert [m for m in modules if m.startswith(AFTER_FIRST_LIMITS)] == []
    assert "dynexport.sep2.schedule" in modules  # the stored schedule is obeyed meanwhile
    assert "dynexport.sunspec.links" in modules  # the check saw the controller's modules


def test_the_web_server_leaves_the_utility_links_xml_stack_for_later() -> None:
    modules = run_fresh(SERVICE_START + REPORT)["modules"]
    assert isinstance(modules, list)
    assert [m for m in modules if m.startswith(XML_STACK)] == []


def test_the_utility_link_builds_its_tls_context_and_lfdi_without_cryptography(
    site: tuple[Path, str],
) -> None:
    config, lfdi = site
    report = run_fresh(
        SERVICE_START + UTILITY_LINK + REPORT, str(config), str(config.parent / "data")
    )
    assert report["lfdi"] == lfdi  # the same identity cryptography computes
    assert _offending(report["modules"]) == []


def test_the_checker_sees_cryptography_when_a_setup_tool_is_used() -> None:
    report = run_fresh(SERVICE_START + "from dynexport.sep2 import certs\n" + REPORT)
    assert "cryptography" in _offending(report["modules"])


def test_help_still_lists_every_command_group() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dynexport", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for group in ("sunspec", "cert", "sep2", "run", "demo", "config", "update"):
        assert f"    {group}" in result.stdout


def test_a_command_imports_only_its_own_group() -> None:
    report = run_fresh(
        "import json, sys\nfrom dynexport.cli import build_parser\n"
        "build_parser(['-v', 'config', '--help-not-parsed'])\n" + REPORT
    )
    modules = report["modules"]
    assert isinstance(modules, list)
    assert "dynexport.system.config_cli" in modules
    assert not {"dynexport.app_cli", "dynexport.sep2.cert_cli", "dynexport.demo_cli"} & set(modules)
