"""`dynexport sep2 walk`: the installer's read-only check, against the simulator in a thread."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from dynexport.cli import main
from dynexport.sep2 import schema
from dynexport.sep2.certs import make_test_pki
from dynexport.sep2.cli import run_walk
from dynexport.sim.utility_server import UtilityServer
from dynexport.system.config import UtilityConfig

pytestmark = pytest.mark.skipif(
    not schema.schema_available(), reason="the simulator validates with the CSIP-AUS XSD"
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[UtilityServer]:
    """The simulator served from its own thread (the CLI runs its own trio.run)."""
    make_test_pki(tmp_path / "pki", now=datetime.now(UTC))
    srv = UtilityServer(pki_dir=tmp_path / "pki")
    now = int(time.time())
    srv.add_control(start=now - 10, duration=3600, export_limit_w=1500)
    srv.set_default(export_limit_w=5000, set_grad_w=27)
    ready = threading.Event()
    holder: dict[str, object] = {}

    async def serve() -> None:
        with trio.CancelScope() as scope:
            holder["scope"] = scope
            holder["token"] = trio.lowlevel.current_trio_token()
            async with srv.running():
                ready.set()
                await trio.sleep_forever()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    assert ready.wait(30)
    yield srv
    scope = holder["scope"]
    assert isinstance(scope, trio.CancelScope)
    trio.from_thread.run_sync(scope.cancel, trio_token=holder["token"])  # type: ignore[arg-type]
    thread.join(30)


def config_for(srv: UtilityServer, pin: int | None = 111115) -> UtilityConfig:
    files = srv.pki.files
    return UtilityConfig(
        server=srv.url,
        ca=files["serca"],
        cert=files["device_chain"],
        key=files["device_key"],
        nmi="4312345678",
        pin=pin,
    )


def test_walk_json_prints_registration_programs_active_default_and_schedule(server):
    out = io.StringIO()
    status = run_walk(config_for(server), as_json=True, out=out)
    data = json.loads(out.getvalue())
    assert status == 0 and data["ok"]
    assert data["registration"]["outcome"] == "ok"
    assert data["lfdi"] == server.pki.device_lfdi
    assert data["active"]["export_limit_w"]["value"] == 1500
    assert data["active"]["export_limit_w"]["origin"].startswith("event ")
    assert data["default"]["export_limit_w"]["value"] == 5000
    assert data["default"]["set_grad_w"] == 27
    assert len(data["programs"]) == 1 and len(data["programs"][0]["events"]) == 1
    limits = [s["controls"]["export_limit_w"]["value"] for s in data["schedule"]]
    assert limits == [1500, 5000]


def test_walk_is_read_only(server):
    run_walk(config_for(server), as_json=True, out=io.StringIO())
    assert server.received and all(r.method == "GET" for r in server.received)


def test_walk_reports_a_pin_mismatch_with_exit_status_2(server):
    out = io.StringIO()
    status = run_walk(config_for(server, pin=999999), as_json=False, out=out)
    assert status == 2
    assert "pin-mismatch" in out.getvalue()


def test_walk_from_the_command_line_with_a_config_file(server, tmp_path, capsys):
    files = server.pki.files
    config = {
        "utility": {
            "type": "csip-aus",
            "server": server.url,
            "ca": str(files["serca"]),
            "cert": str(files["device_chain"]),
            "key": str(files["device_key"]),
            "nmi": "4312345678",
            "pin": 111115,
        }
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert main(["sep2", "walk", "--config", str(path)]) == 0
    text = capsys.readouterr().out
    assert "registration  ok" in text and "export_limit_w=1500" in text


def test_walk_with_an_unreachable_server_fails_with_one_sentence(server):
    out = io.StringIO()
    config = config_for(server)
    bad = UtilityConfig(**{**vars(config), "server": "https://127.0.0.1:9"})
    assert run_walk(bad, as_json=True, out=out) == 1
    assert "cannot connect" in json.loads(out.getvalue())["error"]
